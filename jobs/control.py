"""What the web side asks of the queue: submit, cancel and retry jobs."""

from __future__ import annotations

import os
import shutil
import time

from headway.store import JobState, format_log_line, new_job_id
from jobs import kinds
from jobs.queue import huey, job_store
from jobs.runner import run_job


def submit(
    kind: kinds.JobKind,
    *,
    job_id: str,
    owner: str,
    title: str,
    params: dict,
    inputs: list[str],
    attempt: int = 1,
    retry_of: str = "",
) -> str:
    """Create the `queued` record, then enqueue the task (whose Huey id is the job id)."""
    job_store().create(
        job_id=job_id,
        kind=kind.slug,
        owner=owner,
        title=title,
        stages=[name for name, _ in kind.stages],
        params=params,
        inputs=inputs,
        attempt=attempt,
        retry_of=retry_of,
    )
    huey.enqueue(run_job.s(job_id, id=job_id, retries=kind.retries, retry_delay=kind.retry_delay))
    return job_id


def cancel(job: JobState) -> bool:
    """Cancel a job waiting in the queue (or for a Huey retry) at once, by revoking it; ask a
    running one to stop at its next report. Returns whether anything changed.

    A job that starts between the read and the write is cancelled all the same: its worker's
    next report is refused, which stops it.
    """
    store = job_store()
    if job.status in ("queued", "retrying"):
        huey.revoke_by_id(job.id)
        line = "Cancelled before it started" if job.status == "queued" else "Cancelled"
        return store.update(
            job.id,
            {"status": "cancelled", "finished_at": time.time(), "message": line},
            log_lines=[format_log_line(line, "warning")],
        ).ok
    if job.status == "running":
        return store.update(
            job.id,
            {"cancel_requested": True, "message": "Cancelling…"},
            log_lines=[format_log_line("Cancellation requested", "warning")],
        ).ok
    return False


def retry(job: JobState) -> str:
    """Start a new attempt of a finished job from the same inputs; returns the new job id."""
    kind = kinds.get(job.kind)
    if kind is None:
        raise LookupError(job.kind)
    store = job_store()
    new_id = new_job_id()
    source, target = store.job_dir(job.id) / "input", store.job_dir(new_id) / "input"
    target.mkdir(parents=True)
    for name in job.inputs:
        try:
            os.link(source / name, target / name)  # no copy of possibly huge inputs
        except OSError:
            shutil.copyfile(source / name, target / name)
    submit(
        kind,
        job_id=new_id,
        owner=job.owner,
        title=job.title,
        params=job.params,
        inputs=job.inputs,
        attempt=job.attempt + 1,
        retry_of=job.id,
    )
    store.update(job.id, {"retried_as": new_id})
    return new_id
