"""Faults with real processes: Redis restarted or down mid-job, a worker killed, bad jobs."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from app import create_app
from headway import hub as hub_module
from headway.connection import subscriber_client
from headway.hub import ChangeHub
from headway.store import CHANNEL, new_job_id
from jobs import control, kinds

from .conftest import wait_for
from .test_streams import Events

OWNER = "owner-faults"


@pytest.fixture
def web():
    app = create_app(
        {
            "TESTING": True,
            "WTF_CSRF_ENABLED": False,
            "KEEPALIVE_SECONDS": 0.2,
            "HEARTBEAT_TIMEOUT": 3,
        }
    )
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return client


def submit(slug="steps", **params):
    kind = kinds.get(slug)
    params = {"steps": 10, "delay": 0.01, "fail_at": -1, **params}
    return control.submit(
        kind, job_id=new_job_id(), owner=OWNER, title=kind.title, params=params, inputs=[]
    )


def status(web, job_id):
    response = web.get(f"/api/jobs/{job_id}")
    return response.json["status"] if response.status_code == 200 else None


def test_redis_restart_keeps_finished_jobs_and_never_leaves_one_running(
    store, web, worker_process, redis_server
):
    worker_process(HEADWAY_HEARTBEAT_TIMEOUT=3)
    finished = submit(steps=3)
    wait_for(lambda: status(web, finished) == "succeeded")
    running = submit(steps=150, delay=0.04)
    wait_for(lambda: store.get(running).done >= 5)

    redis_server.restart()

    after = web.get(f"/api/jobs/{finished}").json
    assert after["status"] == "succeeded" and after["files"][0]["name"] == "count.txt"
    with web.get(after["files"][0]["url"]) as download:
        assert download.data == b"3\n"
    final = wait_for(
        lambda: status(web, running) in ("succeeded", "interrupted") and status(web, running),
        timeout=60,
    )
    assert final in ("succeeded", "interrupted")
    # A browser's stream reconnects by itself: the new stream shows the final state.
    events = Events(web.get(f"/jobs/{running}/events", buffered=False))
    assert events.final()[1]["data"] == final


def test_stream_open_across_a_redis_restart_carries_on(store, web, redis_server):
    job_id = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    store.update(job_id, {"status": "running", "heartbeat": time.time()})
    events = Events(web.get(f"/jobs/{job_id}/events", buffered=False))
    assert events.next_event()["event"] == "progress"
    redis_server.restart()
    store.update(job_id, {"status": "succeeded", "progress": 100.0})
    assert events.final()[1]["data"] == "succeeded"  # the hub resubscribed by itself


def test_redis_down_gives_503_pages_and_the_worker_finishes_once_it_is_back(
    store, web, worker_process, redis_server
):
    worker_process(HEADWAY_HEARTBEAT_TIMEOUT=30)
    job_id = submit(steps=40, delay=0.05)
    wait_for(lambda: store.get(job_id).done >= 3)
    redis_server.stop()
    try:
        page = web.get(f"/jobs/{job_id}")
        assert page.status_code == 503 and page.headers["Retry-After"] == "5"
        assert "Headway cannot reach its job store right now." in page.text
        assert "Traceback" not in page.text
        api = web.get(f"/api/jobs/{job_id}")
        assert api.status_code == 503 and api.json["error"] == "Temporarily unavailable"
        assert web.get(f"/jobs/{job_id}/events").status_code == 503
        assert web.get("/healthz").status_code == 503
        time.sleep(3)  # the work (2 s in all) ends while Redis is down
    finally:
        redis_server.start()
    job = wait_for(lambda: (j := store.get(job_id)) and j.finished and j, timeout=60)
    assert job.status == "succeeded"
    assert job.files == [{"name": "count.txt", "size": 3}]


def test_killed_worker_then_retry_runs_to_success(store, web, worker_process):
    worker = worker_process(HEADWAY_HEARTBEAT_TIMEOUT=3)
    job_id = submit(steps=60, delay=0.05)
    wait_for(lambda: store.get(job_id).done >= 3)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    wait_for(lambda: status(web, job_id) == "interrupted", timeout=20)
    page = web.get(f"/jobs/{job_id}").text
    assert "The job was interrupted." in page and "The worker stopped responding" in page

    retried = web.post(f"/jobs/{job_id}/retry")
    assert retried.status_code == 303
    new_id = retried.headers["Location"].rsplit("/", 1)[1]
    worker_process(HEADWAY_HEARTBEAT_TIMEOUT=3)
    wait_for(lambda: status(web, new_id) == "succeeded", timeout=30)
    assert web.get(f"/api/jobs/{new_id}").json["attempt"] == 2
    old = web.get(f"/jobs/{job_id}").text
    assert "See the retry" in old


@pytest.mark.parametrize(
    ("slug", "params", "message"),
    [
        ("steps", {"fail_at": 2}, "Unexpected error: RuntimeError: boom at step 2"),
        ("empty", {}, "The job finished without producing a result file."),
    ],
)
def test_a_job_that_raises_or_writes_nothing_fails_with_its_message(
    store, web, consumer, slug, params, message
):
    job_id = submit(slug, **params)
    wait_for(lambda: status(web, job_id) == "failed")
    job = web.get(f"/api/jobs/{job_id}").json
    assert job["error"] == message and job["files"] == []
    page = web.get(f"/jobs/{job_id}").text
    assert "The job failed." in page and message in page and ">Retry<" in page
    assert "downloads" not in page


def test_a_silent_subscription_is_asked_and_replaced_when_no_answer_comes(monkeypatch):
    """A connection can die without a word: after `PING_SECONDS` of silence the hub asks
    (PING), and without an answer it subscribes again and has every watcher read. Redis
    paused (`CLIENT PAUSE`) leaves its PING unanswered."""
    monkeypatch.setattr(hub_module, "PING_SECONDS", 0.2)
    client = subscriber_client(os.environ["REDIS_URL"])
    hub = ChangeHub(client)
    with hub.watch(["job-a"]) as watcher:
        time.sleep(1.0)  # five quiet spells, each ended by an answered PING
        assert hub.reconnects == 0 and hub._ready.is_set()
        client.client_pause(1500)
        wait_for(lambda: hub.reconnects == 1, timeout=5)
        wait_for(hub._ready.is_set, timeout=5)  # subscribed again once the pause ends
        assert watcher.wait(5) == (set(), True)
        client.publish(CHANNEL, "job-a owner")
        assert watcher.wait(5) == ({"job-a"}, False)


def test_a_fault_in_handing_out_a_change_leaves_the_hub_listening(caplog):
    """The process's one subscription survives a fault of its own: it says so, subscribes
    again, and later changes still reach their watchers."""
    client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    hub = ChangeHub(client)
    dispatch, faults = hub._dispatch, []

    def faulty(data: str) -> None:
        if not faults:
            faults.append(data)
            raise RuntimeError("a fault in the hub's own code")
        dispatch(data)

    hub._dispatch = faulty
    with hub.watch(["job-a"]) as watcher:
        client.publish(CHANNEL, "job-a owner")
        wait_for(lambda: faults and hub._ready.is_set())
        assert watcher.wait(5) == (set(), True)  # resubscribed: every watcher reads again
        client.publish(CHANNEL, "job-a owner")
        assert watcher.wait(5) == ({"job-a"}, False)
    assert "change hub failed; resubscribing" in caplog.text
