"""A job's life through a real Huey consumer: run, cancel, fail, retry, no result."""

from __future__ import annotations

import pytest

from headway.store import new_job_id
from jobs import control, kinds

from .conftest import running_consumer, wait_for


def submit(store, slug="steps", owner="owner-a", **params):
    kind = kinds.get(slug)
    defaults = {"steps": 10, "delay": 0.02, "fail_at": -1}
    job_id = control.submit(
        kind,
        job_id=new_job_id(),
        owner=owner,
        title=kind.title,
        params={**defaults, **params},
        inputs=[],
    )
    return job_id


def final(store, job_id, timeout=20):
    return wait_for(lambda: (job := store.get(job_id)) and job.finished and job, timeout)


def test_job_runs_end_to_end(store, consumer):
    job_id = submit(store, steps=12)
    job = final(store, job_id)
    assert job.status == "succeeded"
    assert job.progress == 100.0
    assert (job.done, job.total, job.failed) == (1, 1, 0)  # the last stage: "Write"
    assert job.stages == ["Prepare", "Count", "Write"] and job.stage == "Write"
    assert job.files == [{"name": "count.txt", "size": 3}]
    assert (store.job_dir(job_id) / "output" / "count.txt").read_text() == "12\n"
    assert job.started_at and job.finished_at >= job.started_at
    messages = [line["msg"] for line in store.log_lines(job_id)]
    assert "step 12 of 12" in messages and messages[-1] == "Job succeeded"
    assert [item.status for item in store.items(job_id)] == ["done"] * 12
    assert job_id in store.client.zrange(store.owner_key("owner-a"), 0, -1)


def test_cancel_before_start(store):
    job_id = submit(store)
    assert store.get(job_id).status == "queued"  # recorded before it was queued
    assert control.cancel(store.get(job_id))
    job = store.get(job_id)
    assert job.status == "cancelled" and job.finished_at


def test_cancel_before_start_is_never_run(store):
    job_id = submit(store, steps=5)
    control.cancel(store.get(job_id))
    later = submit(store, steps=3)
    with running_consumer(workers=1):  # one thread: the revoked task is dequeued first
        final(store, later)
    assert store.get(job_id).status == "cancelled"
    assert not (store.job_dir(job_id) / "output").exists()


def test_cancel_while_running(store, consumer):
    job_id = submit(store, steps=500, delay=0.02)
    wait_for(lambda: store.get(job_id).done >= 3)
    assert control.cancel(store.get(job_id))
    job = final(store, job_id)
    assert job.status == "cancelled"
    assert job.done < 500
    assert "Cancellation requested" in [line["msg"] for line in store.log_lines(job_id)]


def test_failure_keeps_message_and_traceback_stays_off_the_record(store, consumer):
    job_id = submit(store, steps=10, fail_at=4)
    job = final(store, job_id)
    assert job.status == "failed"
    assert job.error == "Unexpected error: RuntimeError: boom at step 4"
    assert "Traceback" not in str(store.client.hgetall(store.key(job_id)))


def test_huey_retries_then_succeeds_without_progress_going_back(store, consumer):
    job_id = submit(store, slug="flaky")
    job = final(store, job_id)
    assert job.status == "succeeded"
    assert job.attempt == 2
    messages = [line["msg"] for line in store.log_lines(job_id)]
    assert any(m.startswith("Attempt failed, will retry") for m in messages)
    assert "Attempt 2 started" in messages


def test_job_error_is_not_retried(store, consumer):
    job_id = submit(store, slug="refuse")
    job = final(store, job_id)
    assert job.status == "failed" and job.attempt == 1
    assert job.error == "Nothing in these files can be processed."


def test_job_without_result_fails(store, consumer):
    job = final(store, submit(store, slug="empty"))
    assert job.status == "failed"
    assert job.error == "The job finished without producing a result file."
    assert job.files == []


def test_retry_creates_a_linked_attempt(store, consumer):
    old_id = submit(store, steps=10, fail_at=2)
    old = final(store, old_id)
    new_id = control.retry(old)
    new = store.get(new_id)
    assert new.attempt == 2 and new.retry_of == old_id
    old_after = store.get(old_id)
    assert old_after.retried_as == new_id
    assert old_after.status == "failed" and old_after.progress == old.progress
    assert final(store, new_id).status == "failed"  # same params, same failure


def test_cancel_while_waiting_for_a_huey_retry_revokes_it(store):
    from jobs.queue import huey
    from jobs.runner import run_job

    job_id = submit(store)
    store.update(job_id, {"status": "running", "heartbeat": 1.0})
    store.update(job_id, {"status": "retrying"})
    assert job_id not in store.client.zrange("hw:running", 0, -1)  # nothing to reap meanwhile
    assert control.cancel(store.get(job_id))
    assert store.get(job_id).status == "cancelled"
    assert huey.is_revoked(run_job.s(job_id, id=job_id))


def test_a_skipped_revoked_task_leaves_no_revocation_behind(store):
    from jobs.queue import huey

    job_id = submit(store, steps=3)
    control.cancel(store.get(job_id))
    later = submit(store, steps=1)
    with running_consumer(workers=1):
        final(store, later)
    assert not huey.storage.has_data_for_key(f"r:{job_id}")


def test_retry_of_a_job_whose_inputs_are_gone_is_refused(store, consumer):
    job = final(store, submit(store, slug="refuse"))
    job.inputs = ["gone.txt"]
    with pytest.raises(control.InputsGone):
        control.retry(job)
    assert store.get(job.id).retried_as == ""


def test_the_worker_builds_the_download_all_zip_before_the_job_succeeds(store, consumer):
    import zipfile

    job = final(store, submit(store, slug="pair"))
    assert job.status == "succeeded"
    bundle = store.job_dir(job.id) / "all-files.zip"
    with zipfile.ZipFile(bundle) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "b.txt"]
        assert zf.read("b.txt") == b"b\n"
    assert [f["name"] for f in job.files] == ["a.txt", "b.txt"]  # the zip is not a result
    single = final(store, submit(store, steps=1))
    assert not (store.job_dir(single.id) / "all-files.zip").exists()  # one result: no zip


def test_concurrent_retries_of_one_job_make_one_attempt(store, consumer):
    from concurrent.futures import ThreadPoolExecutor

    old = final(store, submit(store, steps=3, fail_at=0))
    with ThreadPoolExecutor(8) as pool:
        new_ids = set(pool.map(lambda _: control.retry(old), range(8)))
    assert len(new_ids) == 1 and store.get(old.id).retried_as in new_ids
    assert len(store.list_for_owner("owner-a")) == 2
