"""The SSE streams, server side: headers at once, subscribe-then-read, state not events."""

from __future__ import annotations

import json
import threading
import time
from typing import NamedTuple

import pytest

from app import create_app
from headway.limits import held
from headway.store import CHANNEL
from headway.web.streams import parse_last_event_id, sse

from .conftest import record_reads, wait_for

OWNER = "owner-stream"


def owner_client(config: dict):
    """A test client of an app built with `config`, signed in as OWNER."""
    client = create_app(config).test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return client


@pytest.fixture
def web():
    return owner_client({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "STREAM_MAX_SECONDS": 30})


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

    def final(self) -> tuple[dict, dict]:
        """The final state's message and the `done` that follows it (with the same version,
        and the job's status as its data); the stream ends after them."""
        state, done = self.next_event(), self.next_event()
        assert done is not None and done["event"] == "done", (state, done)
        assert state["event"] in ("progress", "delta") and state["id"] == done["id"], state
        assert self.next() is None and self.ended
        return state, done

    def close(self):
        self.response.close()


def open_stream(web, job_id, **headers):
    response = web.get(f"/jobs/{job_id}/events", headers=headers, buffered=False)
    return response, Events(response)


def test_a_change_carries_the_parts_whose_fields_changed_and_no_others(web, store):
    job_id = new_job(store)
    _, events = open_stream(web, job_id)
    events.next_event()

    def change(fields: dict) -> str:
        store.update(job_id, fields)
        return events.next_event()["data"]

    moved = change({"progress": 10.0})
    assert 'id="job-meter"' in moved
    for part in ("job-summary", "job-stages", "job-outcome", "job-facts", "job-fact-"):
        assert f'id="{part}' not in moved
    appeared = change({"current": "a.jpg"})  # a fact appears: the facts come whole
    assert 'id="job-facts"' in appeared and "a.jpg" in appeared
    assert 'id="job-meter"' not in appeared
    now = change({"current": "b.jpg"})  # a fact moves: that fact alone
    assert now.startswith('<div id="job-fact-current" hx-swap-oob="outerHTML">') and "b.jpg" in now
    assert 'id="job-facts"' not in now and 'id="job-fact-stage"' not in now
    said = change({"message": "Halfway"})
    assert 'id="job-summary"' in said and "Halfway" in said and "job-fact-current" not in said


def test_the_whole_region_places_the_parts_its_changes_carry(store):
    """Each part is rendered once per version: the whole region (a new stream's first
    message) places its markup as it is, and a change carries that same markup as an
    out-of-band swap."""
    import contextlib

    from headway.web.streams import stream_framing
    from headway.web.views import JobViews

    job_id = with_items(store, 3)
    app = create_app({"TESTING": True})
    views = JobViews(store)
    with app.test_request_context("/"):
        before = views.get([job_id], time.monotonic(), contextlib.nullcontext)[job_id]
        store.update(job_id, {"progress": 40.0, "message": "Reading"})
        view = views.get([job_id], time.monotonic(), contextlib.nullcontext)[job_id]
        whole = view.message(stream_framing, None, contextlib.nullcontext).decode()
        change = view.message(stream_framing, before.version, contextlib.nullcontext).decode()
    assert "\nevent: progress\n" in whole and "\nevent: delta\n" in change
    assert "hx-swap-oob" not in whole
    for name, markup in view.parts.items():
        assert markup in whole, name
    for name in ("job_meter", "job_summary"):
        root, rest = view.parts[name].split(">", 1)
        assert f'{root} hx-swap-oob="outerHTML">{rest}' in change


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
    # What changed since the version this stream sent: the status line and the meter, as
    # out-of-band swaps; nothing else.
    assert update["event"] == "delta" and update["id"] == str(store.get(job_id).version)
    assert update["data"].startswith('<div id="job-summary" hx-swap-oob="outerHTML">')
    assert "Forty" in update["data"] and "\n" not in update["data"]
    assert '<div id="job-meter" data-status="running" data-percent="40"' in update["data"]
    assert 'aria-valuenow="40"' in update["data"] and 'id="job-facts"' not in update["data"]
    store.update(job_id, {"status": "succeeded", "progress": 100.0, "files": []})
    # The final state is a change like any other (the items and the log stay put), and
    # `done` after it, with the status, ends the stream.
    final, done = events.final()
    assert final["event"] == "delta" and done["data"] == "succeeded"
    assert "badge-succeeded" in final["data"] and "Your results are ready" in final["data"]
    assert 'id="job-items"' not in final["data"] and 'id="job-log' not in final["data"]
    assert final["id"] == str(store.get(job_id).version)


def test_stream_on_a_finished_job_sends_done_at_once_and_ends(web, store):
    job_id = new_job(store)
    store.update(job_id, {"status": "failed", "error": "It broke"})
    _, events = open_stream(web, job_id)
    final, done = events.final()
    assert final["event"] == "progress" and done["data"] == "failed"
    assert "It broke" in final["data"] and "Retry" in final["data"]


def test_a_stream_resumed_from_the_final_version_gets_done_alone(web, store):
    job_id = new_job(store)
    store.update(job_id, {"status": "succeeded", "progress": 100.0})
    version = store.get(job_id).version
    _, events = open_stream(web, job_id, **{"Last-Event-ID": str(version)})
    assert events.next_event() == {"event": "done", "data": "succeeded", "id": str(version)}
    assert events.next() is None and events.ended


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
    final, done = events.final()
    assert final["event"] == "progress" and done["data"] == "succeeded"


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
    client = owner_client({"TESTING": True, "KEEPALIVE_SECONDS": 0.1, "STREAM_MAX_SECONDS": 0.5})
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
    client = owner_client({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "MAX_STREAMS_PER_OWNER": 3})
    job_id = new_job(store)
    opened = [open_stream(client, job_id) for _ in range(3)]
    for _, events in opened:
        events.next_event()
    refused = client.get(f"/jobs/{job_id}/events")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    opened[0][1].close()  # a closed stream frees its slot (a moment later)
    wait_for(lambda: held(store.client, f"hw:streams:{OWNER}") == 2, timeout=5)
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
    """A change its notice carries reaches every stream without a read; one too big for a
    notice is read once for all the streams of the process."""
    from headway.store import NOTICE_MAX

    job_id = new_job(store)
    streams = [open_stream(web, job_id)[1] for _ in range(10)]
    for events in streams:
        events.next_event()
    changes = [({"progress": 50.0}, "50 %", 0), ({"message": "x" * NOTICE_MAX}, "x" * 99, 1)]
    for fields, shown, reads in changes:
        store.client.config_resetstat()
        store.update(job_id, fields)
        received = [events.next_event() for events in streams]
        assert {event["id"] for event in received} == {str(store.get(job_id).version)}
        assert all(shown in event["data"] for event in received)
        stats = store.client.info("commandstats")
        assert stats.get("cmdstat_zrangebyscore", {}).get("calls", 0) == reads
    for events in streams:
        events.close()


def test_a_view_catches_up_from_its_notices_and_reads_when_they_fall_short(store):
    """A view applies the changes its job's notices carry, without a read, and holds what
    a read gives; it reads when a notice is missing (lost with a connection), carries no
    change (too big for one), or came before the moment asked for."""
    import contextlib
    import dataclasses

    from headway.store import NOTICE_MAX, ItemProgress, Notice, format_log_line
    from headway.web.views import JobViews

    job_id = with_items(store, 10)
    app = create_app({"TESTING": True})
    views = JobViews(store)  # fed by hand here (the app's hub feeds the app's own)
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=5) is None  # (the subscription's confirmation)

    def update(fields: dict, **change) -> tuple[float, Notice]:
        store.update(job_id, fields, **change)
        notice = Notice.parse(pubsub.get_message(timeout=5)["data"])
        return time.monotonic(), notice

    def view(views: JobViews, not_before: float):
        store.client.config_resetstat()
        with app.test_request_context("/"):
            got = views.get([job_id], not_before, contextlib.nullcontext)[job_id]
        return got, record_reads(store.client)

    def as_read(got) -> None:
        read, _ = view(JobViews(store), time.monotonic())
        assert (got.state, got.items, got.log_lines) == (read.state, read.items, read.log_lines)

    try:
        first, _ = view(views, time.monotonic())
        heard = [
            update({"progress": 20.0}, items={2: ItemProgress("file-2.jpg", 100.0, "done")}),
            update({"current": "file-3.jpg"}, log_lines=[format_log_line("file-2.jpg: done")]),
            update({"progress": 30.0, "message": "Going"}),
        ]
        for at, notice in heard:
            views.notice(notice, at)
        caught_up, reads = view(views, heard[-1][0])
        assert reads == 0 and caught_up.version == first.version + 3
        assert caught_up.base == first.version  # one step, as a read would make it
        as_read(caught_up)

        _, reads = view(views, time.monotonic())  # a moment after the last notice
        assert reads == 1

        update({"progress": 40.0})  # its notice is lost
        missing = update({"progress": 50.0})
        views.notice(missing[1], missing[0])
        got, reads = view(views, missing[0])
        assert reads == 1 and got.state.progress == 50.0
        as_read(got)

        at, notice = update({"progress": 60.0})
        views.notice(dataclasses.replace(notice, change="not\na change"), at)  # not ours
        got, reads = view(views, at)
        assert reads == 1 and got.state.progress == 60.0

        big = update({"message": "x" * NOTICE_MAX})
        assert big[1].version is None
        views.notice(big[1], big[0])
        got, reads = view(views, big[0])
        assert reads == 1 and got.state.message == "x" * NOTICE_MAX
    finally:
        pubsub.close()


def test_a_watched_job_whose_worker_died_ends_interrupted_on_the_stream(store):
    client = owner_client({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "HEARTBEAT_TIMEOUT": 0.5})
    job_id = new_job(store)  # heartbeat now, then silence: no worker ever beats again
    _, events = open_stream(client, job_id)
    assert events.next_event()["event"] == "progress"
    final, done = events.final()
    assert done["data"] == "interrupted" and "The job was interrupted." in final["data"]


def test_a_job_list_stream_shows_a_dead_workers_job_as_interrupted(store):
    client = owner_client({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "HEARTBEAT_TIMEOUT": 0.5})
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
    client = owner_client({"TESTING": True, "KEEPALIVE_SECONDS": 0.2, "HEARTBEAT_TIMEOUT": 0.5})
    job_id = new_job(store)
    events = open_live(client, f"job={job_id}")
    assert job_message(events.next_event()).final is False
    ended = job_message(events.next_event())
    assert ended.final and "The job was interrupted." in ended.html
    events.close()


# -- /live: the one stream a browser's tabs share -------------------------------------------


def open_live(web, query: str) -> Events:
    return Events(web.get(f"/live?{query}", buffered=False))


class JobMessage(NamedTuple):
    job_id: str
    version: int
    final: bool
    base: int | None  # the version a change starts from; None for the whole state
    html: str


def job_message(message: dict) -> JobMessage:
    assert message["event"] == "job", message
    head, _, html = message["data"].partition("\n")
    job_id, version, final, base = head.split(" ")
    return JobMessage(job_id, int(version), final == "1", None if base == "-" else int(base), html)


def test_live_carries_every_watched_job_addressed_to_it(web, store):
    first, second = new_job(store), new_job(store)
    events = open_live(web, f"job={first}&job={second}")
    assert events.response.status_code == 200
    assert events.response.mimetype == "text/event-stream"
    whole = [job_message(events.next_event()), job_message(events.next_event())]
    assert {m.job_id for m in whole} == {first, second}
    assert all(m.base is None and f'data-job="{m.job_id}"' in m.html for m in whole)
    store.update(second, {"progress": 40.0, "message": "Counting"})
    change = job_message(events.next_event())
    assert (change.job_id, change.final) == (second, False)
    assert change.version == store.get(second).version and change.base == change.version - 1
    assert change.html.startswith('<div id="job-summary"') and "Counting" in change.html
    store.update(first, {"status": "succeeded", "progress": 100.0})
    ended = job_message(events.next_event())
    assert (ended.job_id, ended.final) == (first, True) and "Your results are ready" in ended.html
    events.close()


def test_live_sends_only_what_is_newer_than_the_versions_a_browser_has(web, store):
    stale, current = new_job(store), new_job(store)
    store.update(stale, {"progress": 10.0})
    have = store.get(current).version
    events = open_live(web, f"job={stale}:1&job={current}:{have}")
    first = job_message(events.next_event())
    assert (first.job_id, first.version, first.base) == (stale, store.get(stale).version, None)
    store.update(current, {"progress": 50.0})
    change = job_message(events.next_event())  # nothing in between
    assert (change.job_id, change.version, change.base) == (current, have + 1, have)
    events.close()


def test_live_leaves_out_jobs_that_are_not_the_visitors(web, store):
    foreign = new_job(store, owner="someone-else")
    mine = new_job(store)
    events = open_live(web, f"job={foreign}&job={'0' * 32}&job={mine}")
    assert job_message(events.next_event()).job_id == mine
    store.update(foreign, {"progress": 90.0})
    store.update(mine, {"progress": 20.0})
    assert job_message(events.next_event()).job_id == mine  # never a word of the foreign one
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
    assert held(store.client, f"hw:streams:{OWNER}") == 1
    events.close()


# -- what changed, and only that ------------------------------------------------------------


def with_items(store, count: int) -> str:
    """A running job with `count` item bars and a line in its log."""
    from headway.store import ItemProgress, format_log_line

    job_id = new_job(store)
    items = {i: ItemProgress(f"file-{i}.jpg", 0.0, "pending") for i in range(count)}
    store.update(job_id, {"progress": 1.0}, items=items, log_lines=[format_log_line("Started")])
    return job_id


def test_a_change_carries_only_the_items_and_log_lines_that_changed(web, store):
    from headway.store import ItemProgress, format_log_line

    job_id = with_items(store, 500)
    events = open_live(web, f"job={job_id}")
    whole = job_message(events.next_event())
    assert whole.base is None and whole.html.count('class="item ') == 500

    store.update(
        job_id,
        {"progress": 2.0},
        items={3: ItemProgress("file-3.jpg", 50.0, "running")},
        log_lines=[format_log_line("file-3.jpg: resizing")],
    )
    change = job_message(events.next_event())
    assert change.base == whole.version
    assert change.html.count('class="item ') == 1 and 'id="job-item-3"' in change.html
    assert 'aria-valuenow="50"' in change.html
    assert '<ol hx-swap-oob="afterbegin:#job-log">' in change.html
    assert "file-3.jpg: resizing" in change.html
    assert len(change.html) < len(whole.html) / 20
    events.close()


def test_new_items_and_a_first_log_line_bring_their_regions_whole(web, store):
    from headway.store import ItemProgress, format_log_line

    job_id = new_job(store)
    events = open_live(web, f"job={job_id}")
    assert job_message(events.next_event()).base is None
    store.update(
        job_id,
        items={0: ItemProgress("a.csv", 0.0, "pending"), 1: ItemProgress("b.csv", 0.0, "pending")},
        log_lines=[format_log_line("started")],
    )
    change = job_message(events.next_event()).html
    assert '<div id="job-items" class="items-region" hx-swap-oob="outerHTML">' in change
    assert change.count('class="item ') == 2
    assert '<div id="job-log-region" hx-swap-oob="outerHTML">' in change
    events.close()


def test_a_resumed_stream_gets_the_change_or_the_whole_state(web, store):
    from headway.store import ItemProgress

    job_id = with_items(store, 20)
    _, events = open_stream(web, job_id)
    first = events.next_event()
    assert first["event"] == "progress"
    events.close()  # the connection drops mid-job
    have = int(first["id"])
    store.update(job_id, {"progress": 5.0}, items={7: ItemProgress("file-7.jpg", 70.0, "running")})

    # Resumed from the version it had: just what changed since.
    _, events = open_stream(web, job_id, **{"Last-Event-ID": str(have)})
    change = events.next_event()
    assert change["event"] == "delta" and change["id"] == str(have + 1)
    assert change["data"].count('class="item ') == 1
    events.close()

    # Resumed from a version the server cannot diff from: the whole state.
    for unknown in (str(have - 1), "999999"):
        _, events = open_stream(web, job_id, **{"Last-Event-ID": unknown})
        whole = events.next_event()
        assert whole["event"] == "progress" and whole["data"].count('class="item ') == 20
        assert 'aria-valuenow="70"' in whole["data"]
        events.close()


def test_an_item_that_changes_after_a_skip_still_arrives(web, store):
    """A stream from a version this process never read gets the whole state, in which the
    items changed meanwhile are as they are now."""
    from headway.store import ItemProgress

    job_id = with_items(store, 10)
    have = store.get(job_id).version
    store.update(job_id, {"progress": 3.0}, items={2: ItemProgress("file-2.jpg", 100, "done")})
    store.update(job_id, {"progress": 4.0}, items={5: ItemProgress("file-5.jpg", 30, "running")})
    events = open_live(web, f"job={job_id}:{have}")
    whole = job_message(events.next_event())
    assert whole.base is None  # two versions behind: no change to apply, the whole state
    assert 'id="job-item-2" class="item item-done"' in whole.html
    assert 'id="job-item-5" class="item item-running"' in whole.html
    store.update(job_id, {"progress": 5.0}, items={2: ItemProgress("file-2.jpg", 100, "failed")})
    change = job_message(events.next_event())
    assert (
        change.base == whole.version and 'id="job-item-2" class="item item-failed"' in change.html
    )
    events.close()


def test_a_stream_behind_by_versions_read_here_gets_the_change_since_its_own(web, store):
    """A stream that has a version this process read, but not the last one before the
    newest (it was busy, or its socket full, while versions went by), gets one change from
    its version: every item changed in the versions it skipped, and every log line."""
    from headway.store import ItemProgress, format_log_line

    job_id = with_items(store, 10)
    watching = open_live(web, f"job={job_id}")  # reads each version as it comes
    have = job_message(watching.next_event()).version
    for progress, index, status in ((3.0, 2, "done"), (4.0, 5, "running")):
        name = f"file-{index}.jpg"
        store.update(
            job_id,
            {"progress": progress},
            items={index: ItemProgress(name, 100 if status == "done" else 30, status)},
            log_lines=[format_log_line(f"{name}: {status}")],
        )
        read = job_message(watching.next_event())  # this process reads each version
        assert (read.base, read.version) == (store.get(job_id).version - 1, read.version)
    watching.close()

    behind = open_live(web, f"job={job_id}:{have}")
    change = job_message(behind.next_event())
    assert (change.base, change.version) == (have, have + 2)
    assert change.html.count('class="item ') == 2
    assert 'id="job-item-2" class="item item-done"' in change.html
    assert 'id="job-item-5" class="item item-running"' in change.html
    log = '<ol hx-swap-oob="afterbegin:#job-log">'
    assert change.html.count(log) == 1
    newest_first = change.html.split(log, 1)[1]
    assert newest_first.index("file-5.jpg: running") < newest_first.index("file-2.jpg: done")
    assert 'aria-valuenow="4"' in change.html  # the meter, as it is now
    behind.close()

    # The job's own stream, resumed from that version, likewise.
    _, events = open_stream(web, job_id, **{"Last-Event-ID": str(have)})
    delta = events.next_event()
    assert delta["event"] == "delta" and delta["id"] == str(have + 2)
    assert delta["data"] == change.html
    events.close()


def test_item_bars_and_log_lines_are_rendered_once_per_content(app):
    """A whole region reuses the bars and lines it rendered before, and renders anew only
    what changed."""
    from headway.store import ItemProgress, format_log_line

    item_bar, log_line = app.jinja_env.globals["item_bar"], app.jinja_env.globals["log_line"]
    line = json.loads(format_log_line("file-1.jpg: resized"))
    with app.app_context():
        bar = item_bar(ItemProgress("file-1.jpg", 40.0, "running", 1))
        assert item_bar(ItemProgress("file-1.jpg", 40.0, "running", 1)) is bar
        moved = item_bar(ItemProgress("file-1.jpg", 60.0, "running", 1))
        assert 'aria-valuenow="60"' in moved and 'aria-valuenow="40"' in bar
        assert log_line(dict(line)) is log_line(line)
        assert "file-1.jpg: resized" in log_line(line)
        app.jinja_env.auto_reload = True  # templates being edited: nothing is kept
        assert item_bar(ItemProgress("file-1.jpg", 40.0, "running", 1)) is not bar


def test_a_streams_render_contexts_are_its_own_request_routed_once_and_leave_no_cycles(app):
    """Between yields, a stream renders in a fresh context of its request: the same route,
    the visitor's session, and nothing left for the garbage collector (matching a URL again
    left a reference cycle per context; thousands of streams made collections frequent)."""
    import gc

    from flask import request, session, url_for

    from headway.web.streams import _request_context

    job_id = "a" * 32
    signed = app.session_interface.get_signing_serializer(app).dumps({"owner": OWNER})
    cookie = f"{app.config['SESSION_COOKIE_NAME']}={signed}"
    with app.test_request_context(f"/jobs/{job_id}/events", headers={"Cookie": cookie}):
        context = _request_context()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(20):
            with context():
                assert request.url_rule.endpoint == "streams.job_events"
                assert request.view_args == {"job_id": job_id}
                assert session["owner"] == OWNER
                assert url_for("pages.job_page", job_id=job_id) == f"/jobs/{job_id}"
        gc.collect()
        garbage = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert garbage == []
