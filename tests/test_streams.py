"""The SSE streams, server side: headers at once, subscribe-then-read, state not events."""

from __future__ import annotations

import threading
import time

import pytest

from app import create_app
from headway.store import CHANNEL
from headway.web.streams import parse_last_event_id, sse

OWNER = "owner-stream"


@pytest.fixture
def web():
    app = create_app({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "STREAM_MAX_SECONDS": 30})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return client


def new_job(store, owner=OWNER, status="running"):
    job_id = store.create(kind="steps", owner=owner, title="t", stages=["Work"])
    if status != "queued":
        store.update(job_id, {"status": "running", "heartbeat": time.time()})
    return job_id


class Events:
    """Reads a streamed response message by message."""

    def __init__(self, response):
        self.response = response
        self.chunks = iter(response.response)
        self.buffer = ""
        self.ended = False

    def next(self) -> dict | None:
        """The next message as a dict of fields (comments under ":"); None once it ends."""
        while "\n\n" not in self.buffer:
            try:
                chunk = next(self.chunks)
            except StopIteration:
                self.ended = True
                return None
            self.buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        raw, self.buffer = self.buffer.split("\n\n", 1)
        message: dict = {}
        for line in raw.split("\n"):
            field, _, value = line.partition(":")
            message.setdefault(field, []).append(value.removeprefix(" "))
        return {k: "\n".join(v) for k, v in message.items()}

    def next_event(self) -> dict | None:
        while (message := self.next()) is not None:
            if "event" in message:
                return message
        return None

    def close(self):
        self.response.close()


def open_stream(web, job_id, **headers):
    response = web.get(f"/jobs/{job_id}/events", headers=headers, buffered=False)
    return response, Events(response)


def test_headers_and_retry_hint_go_out_at_once(web, store):
    job_id = new_job(store)
    response, events = open_stream(web, job_id)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert events.next() == {"retry": "1000"}
    snapshot = events.next_event()
    assert snapshot["event"] == "progress" and snapshot["id"] == str(store.get(job_id).version)
    assert 'id="job-progress"' in snapshot["data"]
    events.close()


def test_updates_arrive_and_the_final_state_closes_the_stream(web, store):
    job_id = new_job(store)
    _, events = open_stream(web, job_id)
    events.next_event()
    store.update(job_id, {"progress": 40.0, "message": "Forty"})
    update = events.next_event()
    assert update["event"] == "progress" and "Forty" in update["data"]
    assert 'aria-valuenow="40"' in update["data"]
    store.update(job_id, {"status": "succeeded", "progress": 100.0, "files": []})
    done = events.next_event()
    assert done["event"] == "done" and "badge-succeeded" in done["data"]
    assert events.next() is None and events.ended


def test_stream_on_a_finished_job_sends_done_at_once_and_ends(web, store):
    job_id = new_job(store)
    store.update(job_id, {"status": "failed", "error": "It broke"})
    _, events = open_stream(web, job_id)
    done = events.next_event()
    assert done["event"] == "done" and "It broke" in done["data"] and "Retry" in done["data"]
    assert events.next() is None


def test_reconnect_with_current_version_gets_no_duplicate(web, store):
    job_id = new_job(store)
    version = store.get(job_id).version
    _, events = open_stream(web, job_id, **{"Last-Event-ID": str(version)})
    assert events.next() == {"retry": "1000"}
    assert events.next() == {"": "keepalive"}  # nothing new: only a keepalive comment
    store.update(job_id, {"progress": 10.0})
    assert events.next_event()["id"] == str(version + 1)
    events.close()


@pytest.mark.parametrize("bad", ["abc", "-1", "12; event: x", "9" * 40, "１２"])
def test_malformed_last_event_id_is_ignored(web, store, bad):
    job_id = new_job(store)
    response, events = open_stream(web, job_id, **{"Last-Event-ID": bad})
    assert response.status_code == 200
    assert events.next_event()["id"] == str(store.get(job_id).version)
    events.close()


def test_a_burst_collapses_into_the_newest_state(web, store):
    job_id = new_job(store)
    _, events = open_stream(web, job_id)
    first = int(events.next_event()["id"])
    for i in range(1, 201):
        store.update(job_id, {"progress": i / 2})
    store.update(job_id, {"status": "succeeded"})
    received = []
    while (event := events.next_event()) is not None:
        received.append(int(event["id"]))
    final_version = store.get(job_id).version
    assert received[-1] == final_version == first + 201
    assert len(received) < 100  # state, not a replay of every change
    assert received == sorted(received)


def test_update_between_render_and_stream_start_is_not_missed(web, store):
    job_id = new_job(store)
    web.get(f"/jobs/{job_id}")  # the page is rendered...
    store.update(job_id, {"status": "succeeded", "progress": 100.0})  # ...the job ends...
    _, events = open_stream(web, job_id)  # ...and then the stream starts
    assert events.next_event()["event"] == "done"


def test_one_redis_subscription_however_many_streams(web, store):
    [(_, before)] = store.client.pubsub_numsub(CHANNEL)  # other tests' apps hold theirs
    jobs = [new_job(store) for _ in range(12)]
    streams = [open_stream(web, job_id)[1] for job_id in jobs]
    for events in streams:
        events.next_event()
    assert store.client.pubsub_numsub(CHANNEL) == [(CHANNEL, before + 1)]
    hub = web.application.extensions["headway"].hub
    assert hub.watcher_count == 12
    for events in streams:
        events.close()
    assert hub.watcher_count == 0


def test_many_streams_in_threads_all_get_the_final_state(web, store):
    job_id = new_job(store)
    results = []

    def watch():
        _, events = open_stream(web, job_id)
        last = None
        while (event := events.next_event()) is not None:
            last = event
        results.append(last["event"])

    threads = [threading.Thread(target=watch) for _ in range(10)]
    for t in threads:
        t.start()
    for i in range(1, 20):
        store.update(job_id, {"progress": i * 5.0})
        time.sleep(0.01)
    store.update(job_id, {"status": "succeeded", "progress": 100.0})
    for t in threads:
        t.join(20)
    assert results == ["done"] * 10


def test_stream_lifetime_is_capped(store):
    app = create_app({"TESTING": True, "KEEPALIVE_SECONDS": 0.1, "STREAM_MAX_SECONDS": 0.5})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    _, events = open_stream(client, new_job(store))
    while events.next() is not None:
        pass
    assert events.ended  # the browser reconnects with Last-Event-ID


def test_foreign_and_unknown_streams_are_404(web, store):
    foreign = new_job(store, owner="someone-else")
    assert web.get(f"/jobs/{foreign}/events").status_code == 404
    assert web.get("/jobs/0123456789abcdef0123456789abcdef/events").status_code == 404
    assert web.get("/jobs/not-an-id/events").status_code == 404


def test_streams_per_owner_are_capped_with_429(store):
    app = create_app({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "MAX_STREAMS_PER_OWNER": 3})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    job_id = new_job(store)
    opened = [open_stream(client, job_id) for _ in range(3)]
    for _, events in opened:
        events.next_event()
    refused = client.get(f"/jobs/{job_id}/events")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    opened[0][1].close()  # a closed stream frees its slot
    response, events = open_stream(client, job_id)
    assert response.status_code == 200
    events.close()
    for _, e in opened[1:]:
        e.close()


def test_sse_fields_never_carry_line_breaks():
    message = sse("a\r\nevent: evil", "line one\nline two\r\nline three", "7\n8")
    assert message == (
        "id: 78\nevent: aevent: evil\ndata: line one\ndata: line two\ndata: line three\n\n"
    )
    assert parse_last_event_id("12") == 12 and parse_last_event_id("1 2") is None


def test_streams_of_one_job_share_one_read_per_change(web, store):
    job_id = new_job(store)
    streams = [open_stream(web, job_id)[1] for _ in range(10)]
    for events in streams:
        events.next_event()
    store.client.config_resetstat()
    store.update(job_id, {"progress": 50.0})
    versions = {events.next_event()["id"] for events in streams}
    assert versions == {str(store.get(job_id).version)}
    reads = store.client.info("commandstats").get("cmdstat_lrange", {}).get("calls", 0)
    assert reads == 1  # one read of the log (with the record) for ten streams
    for events in streams:
        events.close()


def test_a_watched_job_whose_worker_died_ends_interrupted_on_the_stream(store):
    app = create_app({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "HEARTBEAT_TIMEOUT": 0.5})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    job_id = new_job(store)  # heartbeat now, then silence: no worker ever beats again
    _, events = open_stream(client, job_id)
    assert events.next_event()["event"] == "progress"
    done = events.next_event()
    assert done["event"] == "done" and "The job was interrupted." in done["data"]


def test_a_job_list_stream_shows_a_dead_workers_job_as_interrupted(store):
    app = create_app({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "HEARTBEAT_TIMEOUT": 0.5})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    job_id = new_job(store)  # its worker never beats again
    events = open_live(client, "rows=1")
    first = events.next_event()
    assert first["event"] == "row" and first["data"].startswith(job_id)
    assert "badge-running" in first["data"]
    row, notice = events.next_event(), events.next_event()
    assert row["event"] == "row" and "badge-interrupted" in row["data"]
    assert notice["event"] == "notice" and "interrupted" in notice["data"]
    events.close()


def test_a_watched_job_whose_worker_died_ends_interrupted_on_the_live_stream(store):
    app = create_app({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "HEARTBEAT_TIMEOUT": 0.5})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    job_id = new_job(store)
    events = open_live(client, f"job={job_id}")
    assert job_message(events.next_event())[2] is False
    _, _, final, html = job_message(events.next_event())
    assert final and "The job was interrupted." in html
    events.close()


# -- /live: the one stream a browser's tabs share -------------------------------------------


def open_live(web, query: str) -> Events:
    return Events(web.get(f"/live?{query}", buffered=False))


def job_message(message: dict) -> tuple[str, int, bool, str]:
    head, _, html = message["data"].partition("\n")
    job_id, version, final = head.split(" ")
    return job_id, int(version), final == "1", html


def test_live_carries_every_watched_job_addressed_to_it(web, store):
    first, second = new_job(store), new_job(store)
    events = open_live(web, f"job={first}&job={second}")
    assert events.response.status_code == 200
    assert events.response.mimetype == "text/event-stream"
    got = {job_message(events.next_event())[0], job_message(events.next_event())[0]}
    assert got == {first, second}
    store.update(second, {"progress": 40.0, "message": "Counting"})
    job_id, version, final, html = job_message(events.next_event())
    assert (job_id, final) == (second, False) and version == store.get(second).version
    assert f'data-job="{second}"' in html and "Counting" in html
    store.update(first, {"status": "succeeded", "progress": 100.0})
    job_id, _, final, html = job_message(events.next_event())
    assert (job_id, final) == (first, True) and "Your results are ready" in html
    events.close()


def test_live_sends_only_what_is_newer_than_the_versions_a_browser_has(web, store):
    stale, current = new_job(store), new_job(store)
    store.update(stale, {"progress": 10.0})
    have = store.get(current).version
    events = open_live(web, f"job={stale}:1&job={current}:{have}")
    job_id, version, _, _ = job_message(events.next_event())
    assert (job_id, version) == (stale, store.get(stale).version)
    store.update(current, {"progress": 50.0})
    assert job_message(events.next_event())[:2] == (current, have + 1)  # nothing in between
    events.close()


def test_live_leaves_out_jobs_that_are_not_the_visitors(web, store):
    foreign = new_job(store, owner="someone-else")
    mine = new_job(store)
    events = open_live(web, f"job={foreign}&job={'0' * 32}&job={mine}")
    assert job_message(events.next_event())[0] == mine
    store.update(foreign, {"progress": 90.0})
    store.update(mine, {"progress": 20.0})
    assert job_message(events.next_event())[0] == mine  # never a word of the foreign one
    events.close()


@pytest.mark.parametrize("query", ["job=nothex", "job=" + "a" * 32 + ":x", "job=" + "a" * 33])
def test_live_refuses_a_malformed_job_with_400(web, query):
    response = web.get(f"/live?{query}")
    assert response.status_code == 400
    assert "Not a job to watch" in response.get_data(as_text=True)


def test_live_with_rows_sends_rows_and_a_notice_when_a_job_ends(web, store):
    mine = new_job(store)
    new_job(store, owner="someone-else")
    events = open_live(web, "rows=1")
    first = events.next_event()
    assert first["event"] == "row" and first["data"].startswith(f"{mine} ")
    assert f'id="job-row-{mine}"' in first["data"]
    store.update(mine, {"status": "succeeded", "progress": 100.0})
    names = {events.next_event()["event"], events.next_event()["event"]}
    assert names == {"row", "notice"}
    later = new_job(store)  # started from another tab: its rows follow too
    row = events.next_event()
    assert row["event"] == "row" and row["data"].startswith(f"{later} ")
    events.close()


def test_live_holds_one_stream_slot_however_many_jobs(web, store):
    jobs = [new_job(store) for _ in range(12)]
    events = open_live(web, "&".join(f"job={j}" for j in jobs) + "&rows=1")
    events.next_event()
    assert store.client.zcard(f"hw:streams:{OWNER}") == 1
    events.close()
