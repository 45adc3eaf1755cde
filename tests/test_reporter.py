"""The worker-side reporter: coalesced writes, stages, heartbeat, rate and ETA, cancellation."""

from __future__ import annotations

import collections
import time

import pytest

from jobs.reporter import JobCancelled, ProgressReporter, _slope

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


def test_rate_and_eta_are_written(store, job_id):
    reporter = ProgressReporter(store, job_id, STAGES, interval=0, heartbeat_interval=60)
    reporter.stage("Work", total=1000)
    for _ in range(5):
        reporter.advance(10)
        time.sleep(0.02)
    job = store.get(job_id)
    assert job.rate > 0 and job.eta is not None and job.eta > 0


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
