"""Polling (JSON and the progress fragment) reads Redis only when the job changed: the
process's change subscription says when, and every poll in between is served from the
process's shared view of the job."""

from __future__ import annotations

import json
import time

import pytest

from app import create_app

from .conftest import record_reads, wait_for

OWNER = "owner-polling"


@pytest.fixture
def web():
    client = create_app({"TESTING": True}).test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return client


def running_job(store) -> str:
    job_id = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    store.update(job_id, {"status": "running", "heartbeat": time.time() + 3600})
    return job_id


@pytest.mark.parametrize("path", ["/api/jobs/{}", "/jobs/{}/progress"])
def test_polls_of_an_unchanged_job_cost_no_read(web, store, path):
    web.application.extensions["headway"].hub.ensure_ready()
    job_id = running_job(store)
    url = path.format(job_id)
    first = web.get(url)
    assert first.status_code == 200

    # The notices of the writes above may arrive after that first read began: then the
    # next poll reads once more. From then on, nothing changes.
    def settled() -> bool:
        store.client.config_resetstat()
        web.get(url)
        return record_reads(store.client) == 0

    wait_for(settled)
    store.client.config_resetstat()
    answers = [web.get(url) for _ in range(20)]
    assert record_reads(store.client) == 0
    assert all(a.get_data() == first.get_data() for a in answers)

    store.update(job_id, {"progress": 42.0, "message": "Forty-two"})
    changed = wait_for(lambda: b"Forty-two" in (a := web.get(url)).get_data() and a)
    assert changed.status_code == 200


def test_json_says_where_a_job_waits_and_which_items_failed(web, store):
    queued = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    store.update(queued, {"queue_ahead": 3, "queue_eta": 42.0})
    job = web.get(f"/api/jobs/{queued}").json
    assert (job["status"], job["queue_ahead"], job["queue_eta_seconds"]) == ("queued", 3, 42.0)
    failing = running_job(store)
    store.update(failing, {"failed": 1, "problems": json.dumps([[4, "b.jpg", "unreadable"]])})
    job = wait_for(lambda: (j := web.get(f"/api/jobs/{failing}").json)["failed"] and j)
    assert job["problems"] == [{"index": 4, "name": "b.jpg", "reason": "unreadable"}]
    assert job["queue_ahead"] is None


def test_a_polled_job_whose_worker_died_ends_interrupted(store):
    web = create_app({"TESTING": True, "HEARTBEAT_TIMEOUT": 0.5}).test_client()
    with web.session_transaction() as session:
        session["owner"] = OWNER
    job_id = store.create(kind="steps", owner=OWNER, title="t", stages=["Work"])
    store.update(job_id, {"status": "running", "heartbeat": time.time()})
    assert web.get(f"/api/jobs/{job_id}").json["status"] == "running"
    # No worker writes again, so no change notice comes: the poll itself must look.
    job = wait_for(lambda: (j := web.get(f"/api/jobs/{job_id}").json)["status"] != "running" and j)
    assert job["status"] == "interrupted"


def test_polls_of_someone_elses_job_are_404_like_unknown_ones(web, store):
    foreign = store.create(kind="steps", owner="someone-else", title="t", stages=["Work"])
    for url in (f"/api/jobs/{foreign}", f"/jobs/{foreign}/progress", "/api/jobs/" + "0" * 32):
        assert web.get(url).status_code == 404


def test_a_removed_job_is_404_to_polls_at_once(web, store):
    """Removal (delete, or the end of retention) is a change too: no process keeps
    serving what it held of the job."""
    web.application.extensions["headway"].hub.ensure_ready()
    job_id = running_job(store)
    assert web.get(f"/api/jobs/{job_id}").status_code == 200
    store.remove(job_id, OWNER)  # as another process would: only the notice tells this one
    wait_for(lambda: web.get(f"/api/jobs/{job_id}").status_code == 404)
    assert web.get(f"/jobs/{job_id}/progress").status_code == 404


def test_the_polled_regions_cancel_form_says_it_polls(web, store):
    """A polled region's parts are its own: its Cancel form says the page polls, so that
    the answer to the cancel keeps polling."""
    job_id = running_job(store)
    fragment = web.get(f"/jobs/{job_id}/progress").get_data(as_text=True)
    assert 'id="cancel-form"' in fragment
    assert '<input type="hidden" name="polling" value="1">' in fragment
