"""The Huey task that runs a job, the signals that drive its state, and the periodic sweeps.

State machine (written through JobStore.update, which rejects anything out of order):
    queued -> running -> succeeded | failed | cancelled | interrupted
    running -> retrying -> running      (Huey retries)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import redis
from huey import crontab
from huey import signals as S
from huey.exceptions import CancelExecution

from headway import queueing
from headway.storage import HOST, StorageError, input_key
from headway.store import UpdateResult, format_log_line
from jobs import kinds, sandbox
from jobs.kinds import JobError
from jobs.queue import REDIS_URL, huey, job_store
from jobs.reporter import JobCancelled

log = logging.getLogger("headway.runner")

FINAL_WRITE_PATIENCE = sandbox.FINAL_WRITE_PATIENCE


def worker_name() -> str:
    """Which machine and process runs an attempt (kept on the job's record)."""
    return f"{HOST}:{os.getpid()}"


@huey.task(context=True, name="headway.run_job")
def run_job(job_id: str, task=None) -> None:
    """Run one attempt of a job: its kind's work function, in a process of its own, in a
    private folder on this machine that goes when the attempt ends. Inputs come from the
    storage and results go back to it, so any worker can run any attempt."""
    store = job_store()
    job = store.get(job_id)
    if job is None or job.finished:
        log.info("job %s: not run (%s)", job_id, job.status if job else "record gone")
        return
    kind = kinds.get(job.kind)
    if kind is None:
        raise JobError(f"Unknown job kind {job.kind!r}.")
    _forget_results(store, job_id)  # a retry starts from a clean slate
    work = work_folder(store.settings, job_id)
    output_dir = work / "output"
    output_dir.mkdir(parents=True)
    attempt = sandbox.Attempt(
        job_id=job_id,
        kind=kind,
        inputs=[work / "input" / name for name in job.inputs],
        input_keys=tuple(input_key(job_id, name) for name in job.inputs),
        params=job.params,
        output_dir=output_dir,
        scratch_dir=work / "scratch",
        attempt=job.attempt,
        floor=job.progress,
        limits=sandbox.limits_for(kind, store.settings),
        settings=store.settings,
        redis_url=REDIS_URL,
    )
    try:
        sandbox.run(attempt, store)
    except JobCancelled:
        _forget_results(store, job_id)  # nothing to download: free the space
        raise CancelExecution(retry=False) from None
    except BaseException:
        _forget_results(store, job_id)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def work_folder(settings, job_id: str) -> Path:
    """A new private folder for one attempt, named after this host and process so that a
    worker starting on this machine can remove those of workers that died."""
    root = settings.instance_path / "work"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{HOST}-{os.getpid()}-{job_id}-", dir=root))


def sweep_work_folders(settings) -> int:
    """Remove the attempt folders of this host's workers that are gone; returns how many."""
    removed = 0
    try:
        entries = list(os.scandir(settings.instance_path / "work"))
    except FileNotFoundError:
        return 0
    for entry in entries:
        host, _, rest = entry.name.partition(f"{HOST}-")
        pid = rest.split("-", 1)[0]
        if host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
        except PermissionError:
            pass
    return removed


def _forget_results(store, job_id: str) -> None:
    try:
        store.storage.remove_results(job_id)
    except (StorageError, OSError) as exc:  # the orphan sweep finds them once the job goes
        log.warning("job %s: could not remove partial results: %s", job_id, exc)


def _is_job(task) -> bool:
    return task.name == run_job.name


def _write_final(job_id: str, fields: dict, line: str, level: str = "info") -> UpdateResult:
    """Write a state change, waiting out a Redis outage: a final state must not be lost."""
    deadline = time.monotonic() + FINAL_WRITE_PATIENCE
    delay = 0.2
    while True:
        try:
            return job_store().update(job_id, fields, log_lines=[format_log_line(line, level)])
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                log.error("job %s: gave up writing %s: %s", job_id, fields.get("status"), exc)
                raise
            log.warning(
                "job %s: redis unreachable, will retry writing %s", job_id, fields.get("status")
            )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@huey.signal(S.SIGNAL_EXECUTING)
def on_executing(signal, task, *args) -> None:
    if not _is_job(task):
        return
    job_id = task.args[0]
    job = job_store().get(job_id)
    if job is None or job.finished:
        return
    now = time.time()
    fields = {"status": "running", "heartbeat": now, "message": "Started", "worker": worker_name()}
    if job.started_at:  # Huey retrying: a new attempt of the same job
        fields["attempt"] = job.attempt + 1
    else:
        fields["started_at"] = now
    _write_final(job_id, fields, f"Attempt {fields.get('attempt', job.attempt)} started")
    queueing.refresh(job_store())  # one job fewer waits


def _ended(job_id: str) -> None:
    """A job left its worker slot: its run time counts towards the pace; the queue moves."""
    store = job_store()
    job = store.get(job_id)
    if job is not None and job.started_at and job.status in ("succeeded", "failed"):
        queueing.record_duration(store, (job.finished_at or time.time()) - job.started_at)
    queueing.refresh(store)


@huey.signal(S.SIGNAL_COMPLETE)
def on_complete(signal, task, *args) -> None:
    if _is_job(task):
        _write_final(
            task.args[0],
            {
                "status": "succeeded",
                "progress": 100.0,
                "eta": 0,
                "finished_at": time.time(),
                "message": "Finished",
            },
            "Job succeeded",
        )
        _ended(task.args[0])


@huey.signal(S.SIGNAL_ERROR)
def on_error(signal, task, exc=None, *args) -> None:
    if not _is_job(task):
        return
    if isinstance(exc, JobError):
        task.retries = 0  # the person's input, a limit, the kind's verdict: retrying won't help
        message = str(exc)
    elif isinstance(exc, sandbox.JobCrashed):
        message = f"Unexpected error: {exc}"
    else:
        message = f"Unexpected error: {type(exc).__name__}: {exc}"
    if task.retries:
        _write_final(
            task.args[0],
            {"status": "retrying", "message": f"Retrying after: {message}"},
            f"Attempt failed, will retry: {message}",
            "warning",
        )
    else:
        _write_final(
            task.args[0],
            {"status": "failed", "error": message, "finished_at": time.time(), "message": "Failed"},
            message,
            "error",
        )
    _ended(task.args[0])


@huey.signal(S.SIGNAL_CANCELED, S.SIGNAL_REVOKED)
def on_cancelled(signal, task, *args) -> None:
    if _is_job(task):
        _write_final(
            task.args[0],
            {"status": "cancelled", "finished_at": time.time(), "message": "Cancelled"},
            "Job cancelled",
            "warning",
        )
        _ended(task.args[0])


@huey.signal(S.SIGNAL_INTERRUPTED)
def on_interrupted(signal, task, *args) -> None:
    if _is_job(task):
        _write_final(
            task.args[0],
            {
                "status": "interrupted",
                "finished_at": time.time(),
                "error": "The worker shut down while the job ran.",
                "message": "Interrupted",
            },
            "Worker shut down",
            "error",
        )
        _ended(task.args[0])


def reap_stale_jobs() -> int:
    """Mark every running job whose heartbeat is older than the timeout as interrupted."""
    store = job_store()
    cutoff = time.time() - store.settings.heartbeat_timeout
    return sum(store.mark_interrupted_if_stale(job_id) for job_id in store.stale_running(cutoff))


@huey.periodic_task(crontab(minute="*"), name="headway.sweep")
def sweep() -> None:
    """Every minute: reap jobs whose worker died, remove jobs past their retention (their
    records and their files)."""
    reaped = reap_stale_jobs()
    removed = job_store().remove_expired()
    if reaped or removed:
        log.info("sweep: %d interrupted, %d expired jobs removed", reaped, removed)


ORPHAN_GRACE_SECONDS = 6 * 3600  # far longer than an upload takes to become a job


@huey.periodic_task(crontab(minute="23"), name="headway.sweep_orphans")
def sweep_orphans() -> None:
    """Every hour: remove files whose job has no record (its retention ended while no sweep
    ran, or a process died between storing them and creating the record), and abort
    multipart uploads that their web process never finished."""
    removed = job_store().remove_orphans(ORPHAN_GRACE_SECONDS)
    if removed:
        log.info("sweep: files of %d jobs without a record removed", removed)
