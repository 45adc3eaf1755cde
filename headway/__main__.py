"""`python -m headway`: everything on one machine — Redis, a worker and the web server.

Redis is REDIS_URL when set, otherwise the embedded server in the instance folder (started,
or found running). The worker (`python -m jobs.worker`) and gunicorn with gevent workers
(`gunicorn.conf.py`) run as supervised child processes: one that exits is started again,
after a pause that doubles with each quick crash (up to a minute), and the others carry on;
the embedded Redis is started again the same way. Ctrl-C or SIGTERM stops everything, the
embedded Redis last, after flushing its data.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

from headway.connection import resolve_redis_url
from headway.redis_server import ensure_embedded_redis, redis_answers
from headway.settings import ROOT, Settings

log = logging.getLogger("headway")

FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STEADY_SECONDS = 30.0  # a child that ran this long before it exited was not crash-looping
TICK = 0.2


def raise_file_limit() -> None:
    """Each watching browser holds a socket: allow as many as the system lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervised:
    """One child process, started again with backoff whenever it exits."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.name, self.argv, self.env = name, argv, env
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.backoff = FIRST_BACKOFF
        self.restart_at: float | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env)
        self.started = time.monotonic()
        self.restart_at = None

    def tend(self, now: float) -> None:
        """Notice an exit (logged once), and start the child again when its pause is over."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                log.info("starting %s again", self.name)
                self.start()
            return
        code = self.process.poll()
        if code is None:
            return
        if now - self.started >= STEADY_SECONDS:  # not a crash loop: no long pause
            self.backoff = FIRST_BACKOFF
        delay = self.backoff
        log.error(
            "%s (pid %s) %s; starting it again in %.0f s; the rest of Headway carries on",
            self.name,
            self.process.pid,
            describe_exit(code),
            delay,
        )
        self.backoff = min(delay * 2, MAX_BACKOFF)
        self.restart_at = now + delay

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class EmbeddedRedis:
    """The embedded server, started again (on the same data) should it stop."""

    CHECK_SECONDS = 2.0

    def __init__(self, instance_path: Path):
        self.instance_path = instance_path
        self.socket = instance_path / "redis" / "redis.sock"
        self.next_check = 0.0

    def tend(self, now: float) -> None:
        if now < self.next_check:
            return
        self.next_check = now + self.CHECK_SECONDS
        if not redis_answers(self.socket):
            log.error("the embedded redis stopped answering; starting it again")
            try:
                ensure_embedded_redis(self.instance_path)
            except RuntimeError as exc:
                log.error("could not start the embedded redis: %s", exc)


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("HEADWAY_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = Settings.from_env()
    raise_file_limit()
    url = resolve_redis_url(settings)
    env = {**os.environ, "REDIS_URL": url}
    port = os.environ.get("PORT", "5000")
    host = os.environ.get("HOST", "127.0.0.1")
    log.info("Headway is starting at http://%s:%s (redis: %s)", host, port, url)
    tended: list = [
        Supervised("worker", [sys.executable, "-m", "jobs.worker"], env),
        Supervised(
            "web",
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
            env,
        ),
    ]
    children = list(tended)
    if not settings.redis_url:
        tended.append(EmbeddedRedis(settings.instance_path))

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping:
        now = time.monotonic()
        for part in tended:
            part.tend(now)
        time.sleep(TICK)
    for child in children:
        child.stop()
    for child in children:
        child.wait()
    log.info("Headway stopped")
    return 0  # the embedded Redis stops at exit (atexit), after its clients


if __name__ == "__main__":
    sys.exit(main())
