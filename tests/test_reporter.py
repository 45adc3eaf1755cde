"""The worker-side reporter: coalesced writes, stages, heartbeat, rate and ETA, cancellation."""

from __future__ import annotations

import collections
import itertools
import json
import time

import pytest

from headway.store import CHANNEL, Notice
from headway.web.format import about
from jobs.reporter import CalmEta, JobCancelled, ProgressReporter, _slope

from .conftest import wait_for

STAGES = (("Read", 1), ("Work", 8), ("Write", 1))


@pytest.fixture
def job_id(store):
    job_id = store.create(kind="steps", owner="o", title="t", stages=[n for n, _ in STAGES])
    store.update(job_id, {"status": "running", "heartbeat": time.time()})
    return job_id


def test_a_burst_of_reports_is_coalesced(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0.5, heartbeat_interval=60)
    reporter.stage("Work", total=100_000)
    before = store.get(job_id).version
    for _ in range(100_000):
        reporter.advance()
    reporter.flush()
    writes = store.get(job_id).version - before
    assert writes < 50  # a write per half second at most, not one per call
    job = store.get(job_id)
    assert (job.done, job.total, job.stage) == (100_000, 100_000, "Work")


def test_a_write_carries_only_the_fields_that_changed_since_the_last_accepted_one(store, job_id):
    # Every field went with every write: 13 where a progress update changes 5 or 6, for
    # Redis to store and for each web process to parse from the notice. The heartbeat and
    # the attempt (by which a superseded attempt's writes are turned away) go every time.
    pubsub = store.client.pubsub()
    pubsub.subscribe(CHANNEL)
    wait_for(lambda: (pubsub.get_message(timeout=0.1) or {}).get("type") == "subscribe")

    def next_fields() -> set[str]:
        message = None
        while message is None or message["type"] != "message":
            message = pubsub.get_message(timeout=5)
        notice = Notice.parse(message["data"])
        return set(json.loads(notice.change.split("\n")[1]))

    try:
        reporter = ProgressReporter(store, job_id, STAGES, interval=3600, heartbeat_interval=3600)
        reporter.stage("Work", total=10)
        assert {"stage", "stage_index", "total", "current", "message"} <= next_fields()
        reporter.advance(3)
        reporter.flush()
        # (the rate and the time left follow the clock: they may change with any write)
        sent = next_fields() - {"rate", "eta"}
        assert sent == {"done", "progress", "heartbeat", "attempt"}
        reporter.flush()
        assert next_fields() - {"rate", "eta"} == {"heartbeat", "attempt"}
        job = store.get(job_id)
        assert (job.stage, job.done, job.total) == ("Work", 3, 10)
    finally:
        pubsub.close()


def test_stage_changes_are_written_at_once_and_weigh_the_overall_progress(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=3600, heartbeat_interval=3600)
    reporter.stage("Read", total=4)
    reporter.flush()
    reporter.advance(2)
    reporter.stage("Work", total=10)  # no flush: a stage change goes out by itself
    job = store.get(job_id)
    assert (job.stage, job.stage_index, job.done, job.total) == ("Work", 1, 0, 10)
    assert job.progress == 10.0  # "Read" (weight 1 of 10) is complete
    reporter.advance(5)
    assert reporter.progress == 50.0  # 10 % + half of "Work"'s 80 %
    with pytest.raises(ValueError, match="unknown stage 'Nope'"):
        reporter.stage("Nope")


def test_progress_never_goes_below_the_floor_of_an_earlier_attempt(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, floor=42.0)
    reporter.stage("Read", total=10)
    assert reporter.progress == 42.0
    assert store.get(job_id).progress == 42.0


def test_heartbeat_goes_on_while_the_job_code_is_silent(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0.05, heartbeat_interval=0.1)
    with reporter:
        first = store.get(job_id).heartbeat
        wait_for(lambda: store.get(job_id).heartbeat > first, timeout=5)


def test_pending_changes_reach_the_record_without_another_call(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0.05, heartbeat_interval=60)
    with reporter:
        reporter.stage("Work", total=10)
        reporter.advance(3)  # within the interval: held back, then written by the thread
        wait_for(lambda: store.get(job_id).done == 3, timeout=5)


def test_cancellation_is_seen_at_the_next_report(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, heartbeat_interval=60)
    reporter.stage("Work", total=10)
    reporter.advance()
    store.update(job_id, {"cancel_requested": True})
    with pytest.raises(JobCancelled):
        reporter.advance()
    with pytest.raises(JobCancelled):
        reporter.check()


def test_a_finished_or_removed_job_stops_its_reporter(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, heartbeat_interval=60)
    store.update(job_id, {"status": "interrupted"})
    with pytest.raises(JobCancelled):
        reporter.stage("Read", total=1)


def test_item_bars_and_log_lines(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, max_items=2)
    reporter.item(0, "a.png", 150, "running")
    reporter.item(1, "b.png", 100, "done")
    reporter.item(2, "c.png", 50)  # past max_items: no bar
    reporter.log("careful", "warning")
    items = store.items(job_id)
    assert [(i.name, i.percent, i.status) for i in items] == [
        ("a.png", 100.0, "running"),
        ("b.png", 100.0, "done"),
    ]
    assert store.log_lines(job_id)[-1]["msg"] == "careful"


def test_rate_and_eta_come_from_the_recent_window_not_the_start():
    # 20 s at 100 items/s, then 20 s at 10 items/s: the rate is today's pace, not the average.
    samples = collections.deque(maxlen=64)
    done = 0
    for t in range(41):
        samples.append((float(t), done))
        done += 100 if t < 20 else 10
    assert _slope(samples, now=40.0) == pytest.approx(10.0)
    assert samples[0][0] >= 30.0  # older samples were dropped


def test_rate_is_written_at_once_and_eta_only_with_evidence(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, heartbeat_interval=60)
    reporter._eta = CalmEta(min_seconds=0.3, min_percent=3)
    reporter.stage("Work", total=1000)
    for _ in range(5):
        reporter.advance(10)
        time.sleep(0.02)
    job = store.get(job_id)
    assert job.rate > 0 and job.eta is None  # 0.1 s of work: no guess yet
    while store.get(job_id).eta is None:
        reporter.advance(10)
        time.sleep(0.02)
    assert store.get(job_id).eta > 0


def test_no_eta_without_a_few_seconds_and_a_few_percent():
    eta = CalmEta(min_seconds=3, min_percent=3)
    assert eta.update(0.0, 0.0, 5.0) is None
    assert eta.update(2.9, 20.0, 5.0) is None  # much progress, too little time
    slow = CalmEta(min_seconds=3, min_percent=3)
    slow.update(0.0, 0.0, 0.5)
    assert slow.update(5.0, 2.5, 0.5) is None  # time enough, too little progress
    assert slow.update(7.0, 3.5, 0.5) == pytest.approx(193.0)
    assert eta.update(3.0, 21.0, 5.0) == pytest.approx(79.0 / 5.0)


def test_eta_is_smoothed_and_never_counts_up_while_the_job_advances():
    eta = CalmEta(min_seconds=3, min_percent=3, smoothing=0.25)
    eta.update(0.0, 0.0, 1.0)
    shown = [eta.update(4.0, 4.0, 1.0)]  # 96 s left
    progress, now = 4.0, 4.0
    # The pace jumps around (a slow item, a fast one): the raw estimate swings by 4x.
    for speed in [0.25, 2.0, 0.3, 1.5, 0.25, 0.25, 0.25, 1.0] * 3:
        now += 1.0
        progress += speed
        shown.append(eta.update(now, progress, speed))
    assert all(b <= a for a, b in itertools.pairwise(shown)), shown
    raw_swing = (100 - 5) / 0.25 - (100 - 5) / 2.0
    assert max(a - b for a, b in itertools.pairwise(shown)) < raw_swing / 4
    # Rounded for people, the text never goes up either.
    texts = [about(s) for s in shown]
    minutes = [0 if t.startswith("less") else int(t.split()[1]) for t in texts]
    assert minutes == sorted(minutes, reverse=True), texts


def test_a_stalled_job_drops_its_eta_and_may_then_show_a_longer_one():
    eta = CalmEta(min_seconds=1, min_percent=1)
    eta.update(0.0, 0.0, 10.0)
    assert eta.update(2.0, 20.0, 10.0) == pytest.approx(8.0)
    assert eta.update(30.0, 20.0, 0.0) is None  # nothing moved within the window
    assert eta.update(31.0, 21.0, 0.1) == pytest.approx(790.0)


def test_eta_reads_as_a_person_would_say_it():
    assert about(None) == "–"
    assert about(12) == "less than a minute"
    assert about(100) == "about 2 min"
    assert about(59 * 60) == "about 59 min"
    assert about(80 * 60) == "about 1 h 20 min"
    assert about(3 * 3600) == "about 3 h"
    assert about(30 * 3600) == "about 30 h"


def test_failed_items_carry_their_reason_and_name_the_problems(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, heartbeat_interval=60)
    reporter.item(0, "a.png", 100, "done")
    reporter.item(1, "b.png", 100, "failed", reason="the file is truncated or corrupt")
    reporter.item(2, "c.png", 100, "failed")  # the old call, without a reason
    items = store.items(job_id)
    assert [(i.name, i.status, i.reason) for i in items] == [
        ("a.png", "done", ""),
        ("b.png", "failed", "the file is truncated or corrupt"),
        ("c.png", "failed", ""),
    ]
    problems = store.get(job_id).problems
    assert [(p.index, p.name, p.reason) for p in problems] == [
        (1, "b.png", "the file is truncated or corrupt"),
        (2, "c.png", ""),
    ]
    reporter.item(2, "c.png", 100, "done")  # it worked after all
    assert [p.name for p in store.get(job_id).problems] == ["b.png"]


def test_a_larger_total_never_lowers_what_was_shown_nor_loses_a_line(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, heartbeat_interval=60)
    reporter.stage("Work", total=10)
    reporter.advance(5)
    shown = store.get(job_id).progress
    reporter.set(total=100)  # the work turned out larger: the fraction drops
    reporter.log("important line")
    reporter.item(0, "a", 50)
    assert store.get(job_id).progress == shown
    assert store.log_lines(job_id)[-1]["msg"] == "important line"
    assert [i.name for i in store.items(job_id)] == ["a"]
