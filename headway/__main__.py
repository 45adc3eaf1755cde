"""`python -m headway`: everything on one machine — Redis, a worker and the web server.

Redis is REDIS_URL when set, otherwise the embedded server in the instance folder (started,
or found running). The worker (`python -m jobs.worker`) and gunicorn with gevent workers
(`gunicorn.conf.py`) run as child processes; when one of them stops, or on Ctrl-C or
SIGTERM, everything stops, and the embedded Redis last, after flushing its data.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import subprocess
import sys
import time

from headway.connection import resolve_redis_url
from headway.settings import ROOT, Settings

log = logging.getLogger("headway")


def raise_file_limit() -> None:
    """Each watching browser holds a socket: allow as many as the system lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> int:
    logging.basicConfig(
        level=os.environ.get("HEADWAY_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    settings = Settings.from_env()
    raise_file_limit()
    url = resolve_redis_url(settings)
    env = {**os.environ, "REDIS_URL": url}
    children = {
        "worker": subprocess.Popen([sys.executable, "-m", "jobs.worker"], cwd=ROOT, env=env),
        "web": subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app:create_app()"],
            cwd=ROOT,
            env=env,
        ),
    }
    port = os.environ.get("PORT", "5000")
    host = os.environ.get("HOST", "127.0.0.1")
    log.info("Headway is starting at http://%s:%s (redis: %s)", host, port, url)

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    status = 0
    while not stopping:
        for name, child in children.items():
            if child.poll() is not None:
                log.error("%s exited with status %s; stopping Headway", name, child.returncode)
                status, stopping = 1, True
        time.sleep(0.2)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in children.values():
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
    log.info("Headway stopped")
    return status  # the embedded Redis stops at exit (atexit), after its clients


if __name__ == "__main__":
    sys.exit(main())
