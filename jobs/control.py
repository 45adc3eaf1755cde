"""What the web side asks of the queue: submit, cancel and retry jobs.

Each call takes the store to write through; the web passes its own (configured like the
app), and it defaults to the worker side's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from headway import queueing
from headway.storage import input_key
from headway.store import JobState, JobStore, format_log_line, new_job_id
from jobs import kinds
from jobs.queue import huey, job_store
from jobs.runner import run_job


class InputsGone(Exception):
    """A job's inputs are no longer there (its retention ended): it cannot be retried."""


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
    store: JobStore | None = None,
) -> str:
    """Create the `queued` record, then enqueue the task (whose Huey id is the job id).

    Should the enqueue fail, the record goes too: no job waits forever for a task that
    was never queued.
    """
    store = store or job_store()
    store.create(
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
    try:
        huey.enqueue(
            run_job.s(job_id, id=job_id, retries=kind.retries, retry_delay=kind.retry_delay)
        )
    except BaseException:
        store.remove(job_id, owner)
        raise
    queueing.refresh(store)
    return job_id


def cancel(job: JobState, store: JobStore | None = None) -> bool:
    """Cancel a job waiting in the queue (or for a Huey retry) at once, by revoking it; ask a
    running one to stop at its next report. Returns whether anything changed.

    A job that starts between the read and the write is cancelled all the same: its worker's
    next report is refused, which stops it.
    """
    store = store or job_store()
    if job.status in ("queued", "retrying"):
        huey.revoke_by_id(job.id, revoke_once=True)  # the flag goes once the task is skipped
        line = "Cancelled before it started" if job.status == "queued" else "Cancelled"
        changed = store.update(
            job.id,
            {"status": "cancelled", "finished_at": time.time(), "message": line},
            log_lines=[format_log_line(line, "warning")],
        ).ok
        queueing.refresh(store)  # the jobs behind it move up
        return changed
    if job.status == "running":
        return store.update(
            job.id,
            {"cancel_requested": True, "message": "Cancelling…"},
            log_lines=[format_log_line("Cancellation requested", "warning")],
        ).ok
    return False


RETRY_CLAIM_SECONDS = 60.0  # longest a retry may take to create its attempt
RETRY_WAIT_SECONDS = 10.0  # how long a concurrent retry waits for the first one's attempt


class RetryPending(Exception):
    """Another request is creating the new attempt and did not finish in time."""


def retry(job: JobState, store: JobStore | None = None) -> str:
    """Start a new attempt of a finished job from the same inputs; returns the new job id.

    Any number of concurrent calls make exactly one new attempt, and all return its id.
    """
    return retry_once(job, store)[0]


FAILED_ITEMS_SUFFIX = " (failed items)"


class NothingToRetry(Exception):
    """The job has no failed items, or its kind's items cannot be retried one by one."""


def retry_once(
    job: JobState,
    store: JobStore | None = None,
    before: Callable[[], None] = lambda: None,
    *,
    failed_items: bool = False,
) -> tuple[str, bool]:
    """`retry`, and whether this call made the attempt. `before` runs only in the call that
    makes it (for limits: the others land on an attempt that already counts).
    `failed_items`: the new attempt gets only the inputs of the job's failed items (for
    kinds with `retry_items`, whose item i is input i).

    The first call claims the job (SET NX, with an expiry should its process die); the
    others wait for the job's link to the attempt, or take over a claim that was given up.
    """
    store = store or job_store()
    link = "retried_items_as" if failed_items else "retried_as"
    claim = f"hw:retry-claim:{job.id}:{link}"
    deadline = time.monotonic() + RETRY_WAIT_SECONDS
    while True:
        current = store.get(job.id)
        if current is not None and getattr(current, link):
            return getattr(current, link), False
        if store.client.set(claim, "1", nx=True, px=int(RETRY_CLAIM_SECONDS * 1000)):
            break
        if time.monotonic() > deadline:
            raise RetryPending(job.id)
        time.sleep(0.05)
    try:
        current = store.get(job.id)  # the attempt may have been made just before the claim
        if current is not None and getattr(current, link):
            return getattr(current, link), False
        inputs = failed_inputs(current or job) if failed_items else None
        before()
        return _new_attempt(job, store, inputs, link), True
    except BaseException:
        store.client.delete(claim)  # someone waiting may try in its place
        raise


def failed_inputs(job: JobState) -> list[str]:
    """The inputs of the job's failed items; raises NothingToRetry if there are none."""
    kind = kinds.get(job.kind)
    if kind is None or not kind.retry_items:
        raise NothingToRetry(job.id)
    indexes = sorted({p.index for p in job.problems if 0 <= p.index < len(job.inputs)})
    if not indexes:
        raise NothingToRetry(job.id)
    return [job.inputs[i] for i in indexes]


def _new_attempt(
    job: JobState, store: JobStore, inputs: list[str] | None = None, link: str = "retried_as"
) -> str:
    kind = kinds.get(job.kind)
    if kind is None:
        raise LookupError(job.kind)
    inputs = job.inputs if inputs is None else inputs
    new_id = new_job_id()
    storage = store.storage
    if not all(storage.exists(input_key(job.id, name)) for name in inputs):
        raise InputsGone(job.id)
    try:
        for name in inputs:
            # Inside the storage (a hard link, or a server-side copy): never through here.
            try:
                storage.copy(input_key(job.id, name), input_key(new_id, name))
            except KeyError:
                raise InputsGone(job.id) from None
        title = job.title
        if inputs is not job.inputs and not title.endswith(FAILED_ITEMS_SUFFIX):
            title += FAILED_ITEMS_SUFFIX
        submit(
            kind,
            job_id=new_id,
            owner=job.owner,
            title=title,
            params=job.params,
            inputs=inputs,
            attempt=job.attempt + 1,
            retry_of=job.id,
            store=store,
        )
    except BaseException:
        storage.remove_job(new_id)
        raise
    store.update(job.id, {link: new_id})
    return new_id
