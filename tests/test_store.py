"""The job record's guarantees under concurrent writers: monotonic, versioned, final is final."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import threading
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headway.connection import redis_client
from headway.settings import Settings
from headway.store import (
    CHANNEL,
    NOTICE_MAX,
    ItemProgress,
    JobStore,
    Notice,
    format_log_line,
    new_job_id,
)

FINAL = ["succeeded", "failed", "cancelled", "interrupted"]


def make_job(store, owner="owner-a"):
    job_id = store.create(kind="steps", owner=owner, title="t", stages=["Work"])
    assert store.update(job_id, {"status": "running", "heartbeat": time.time()}).ok
    return job_id


def hammer(url: str, job_id: str, seed: int, writes: int) -> list[tuple]:
    """One writer: random progress values, now and then a final status. Returns its results."""
    store = JobStore(redis_client(url), Settings.from_env())
    rng = random.Random(seed)
    results = []
    for _ in range(writes):
        fields = {"progress": round(rng.uniform(0, 100), 2), "done": rng.randint(0, 1000)}
        if rng.random() < 0.01:
            fields["status"] = rng.choice(FINAL)
        r = store.update(job_id, fields)
        results.append((r.ok, r.reason, r.version, fields["progress"], fields.get("status")))
    return results


def check_history(store, job_id, results):
    accepted = sorted((r for r in results if r[0]), key=lambda r: r[2])
    versions = [r[2] for r in accepted]
    assert len(versions) == len(set(versions)), "two writes got the same version"
    progress = [r[3] for r in accepted]
    assert progress == sorted(progress), "an accepted write lowered the progress"
    finals = [r for r in accepted if r[4]]
    assert len(finals) <= 1, "more than one final status was accepted"
    if finals:
        assert accepted[-1] is finals[0], "a write was accepted after the final status"
        assert store.get(job_id).status == finals[0][4]
    rejected = [r for r in results if not r[0]]
    assert all(r[1] in ("regress", "final") for r in rejected)
    stored = store.get(job_id)
    assert stored.version == 2 + len(accepted)  # created at 1, +1 for "running", +1 per write
    assert stored.progress == (progress[-1] if progress else 0)


def test_threads_hammering_one_job(store):
    job_id = make_job(store)
    url = os.environ["REDIS_URL"]
    results: list = []
    lock = threading.Lock()

    def run(seed):
        out = hammer(url, job_id, seed, 300)
        with lock:
            results.extend(out)

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_history(store, job_id, results)


def test_processes_hammering_one_job(store):
    job_id = make_job(store)
    url = os.environ["REDIS_URL"]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        chunks = pool.starmap(hammer, [(url, job_id, seed, 300) for seed in range(4)])
    check_history(store, job_id, [r for chunk in chunks for r in chunk])


write = st.one_of(
    st.builds(lambda p: {"progress": p}, st.floats(0, 100).map(lambda x: round(x, 2))),
    st.builds(lambda s: {"status": s}, st.sampled_from(["running", "retrying", *FINAL])),
    st.just({"message": "hello"}),
)
ALLOWED = {
    "running": {"retrying", *FINAL},
    "retrying": {"running", "failed", "cancelled", "interrupted"},
}


def expected_reason(status: str, progress: float, fields: dict) -> str:
    """The model of the update script: what it must answer to a write in this state."""
    if status in FINAL:
        return "final"
    if fields.get("progress", progress) < progress:
        return "regress"
    wanted = fields.get("status", status)
    if wanted != status and wanted not in ALLOWED[status]:
        return "transition"
    return "ok"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(writes=st.lists(write, min_size=1, max_size=40))
def test_any_sequence_of_writes_follows_the_model(store, writes):
    job_id = make_job(store)
    status, progress, version = "running", 0.0, store.get(job_id).version
    for fields in writes:
        result = store.update(job_id, fields)
        assert result.reason == expected_reason(status, progress, fields)
        if result.ok:
            assert result.version == version + 1
            version = result.version
            progress = fields.get("progress", progress)
            status = fields.get("status", status)
    job = store.get(job_id)
    assert (job.status, job.progress, job.version) == (status, progress, version)


def test_unknown_job_is_rejected_without_creating_anything(store):
    job_id = new_job_id()
    assert store.update(job_id, {"progress": 5}).reason == "missing"
    assert not store.client.exists(store.key(job_id))


def test_only_the_retry_link_may_touch_a_finished_job(store):
    job_id = make_job(store)
    assert store.update(job_id, {"status": "failed"}).ok
    assert store.update(job_id, {"message": "late"}).reason == "final"
    assert store.update(job_id, {"retried_as": "x", "status": "running"}).reason == "final"
    assert store.update(job_id, {"retried_as": "abc"}).ok
    assert store.get(job_id).retried_as == "abc"


def test_log_is_capped_and_items_are_kept(store):
    job_id = make_job(store)
    for i in range(store.settings.log_lines + 20):
        store.log(job_id, f"line {i}")
    lines = store.log_lines(job_id)
    assert len(lines) == store.settings.log_lines
    assert lines[-1]["msg"] == f"line {store.settings.log_lines + 19}"


def test_finished_jobs_expire_with_their_index_entry_and_files(store):
    short = JobStore(store.client, dataclasses.replace(store.settings, retention_seconds=1))
    keep = make_job(short, owner="o")  # still running: must survive
    gone = make_job(short, owner="o")
    (short.job_dir(gone) / "output").mkdir(parents=True)
    (short.job_dir(gone) / "output" / "r.txt").write_text("x")
    assert short.update(gone, {"status": "succeeded"}).ok
    assert 0 < short.client.ttl(short.key(gone)) <= 1
    time.sleep(1.2)
    assert short.remove_expired() == 1
    assert not short.client.exists(short.key(gone), f"{short.key(gone)}:log")
    assert short.client.zrange(short.owner_key("o"), 0, -1) == [keep]
    assert not short.job_dir(gone).exists()
    assert short.get(keep).status == "running"


def test_reaper_marks_only_silent_jobs_interrupted(store):
    quick = JobStore(store.client, dataclasses.replace(store.settings, heartbeat_timeout=0.5))
    silent = make_job(quick)
    alive = make_job(quick)
    time.sleep(0.7)
    quick.update(alive, {"heartbeat": time.time()})
    reaped = [
        j for j in quick.stale_running(time.time() - 0.5) if quick.mark_interrupted_if_stale(j)
    ]
    assert reaped == [silent]
    assert quick.get(silent).status == "interrupted"
    assert quick.get(alive).status == "running"


def test_read_since_survives_a_redis_that_lost_its_scripts(store):
    """Reads run the read script by its hash; a Redis that restarted (or flushed its
    scripts) has it loaded again, and the read still answers."""
    job_id = store.create(kind="steps", owner="o", title="t", stages=["Work"])
    store.update(job_id, {"status": "running", "message": "before"})
    assert store.read_since({job_id: None})[job_id].state.message == "before"
    store.client.script_flush()
    store.update(job_id, {"message": "after"})  # the update script reloads itself too
    store.client.script_flush()
    changes = store.read_since({job_id: None, "0" * 32: None})
    assert changes[job_id].state.message == "after" and changes["0" * 32] is None


# One update as a worker makes it: some fields, some log lines, some items (new or changed).
change = st.tuples(
    st.fixed_dictionaries(
        {},
        optional={
            "message": st.text(max_size=40),
            "current": st.text(max_size=40),
            "done": st.integers(0, 10**6),
            "eta": st.none() | st.floats(0, 1e6, allow_nan=False),
            "files": st.lists(st.fixed_dictionaries({"name": st.text(max_size=10)}), max_size=2),
            "stages": st.lists(st.text(max_size=10), max_size=3),
            "queue_ahead": st.none() | st.integers(0, 50),
            "cancel_requested": st.booleans(),
            "worker": st.text(max_size=20),
        },
    ),
    st.lists(st.text(max_size=30), max_size=3),
    st.dictionaries(
        st.integers(0, 12),
        st.builds(ItemProgress, st.text(max_size=12), st.floats(0, 100), st.just("running")),
        max_size=4,
    ),
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(change, min_size=1, max_size=6), big=st.integers(0, 5))
def test_a_notice_applied_to_the_version_before_is_what_a_read_finds(store, changes, big):
    """Each update's notice carries the update; applied to the record at the version
    before, it gives what a read since that version gives. An update too big for a
    notice carries none, and its readers read."""
    job_id = make_job(store)
    pubsub = store.client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    assert pubsub.get_message(timeout=5) is None  # (the subscription's confirmation)
    before = store.read_since({job_id: None})[job_id]
    try:
        for i, (fields, lines, items) in enumerate(changes):
            if i == big:
                fields = {**fields, "message": "x" * NOTICE_MAX}
            lines = [format_log_line(line) for line in lines]
            assert store.update(job_id, fields, log_lines=lines, items=items).ok
            notice = Notice.parse(pubsub.get_message(timeout=5)["data"])
            seen = (before.state.version, before.state.log_total)
            after = store.read_since({job_id: seen})[job_id]
            assert (notice.job_id, notice.owner) == (job_id, "owner-a")
            if i == big:
                assert notice.version is None
            else:
                assert notice.version == after.state.version == before.state.version + 1
                applied = notice.apply(before.state, before.record)
                assert applied.record == after.record
                assert applied.state == after.state
                assert applied.items == after.items
                assert applied.log_lines == after.log_lines
            before = after
    finally:
        pubsub.close()
