"""Pages: the index, the job list (filtered, paged), the job page and its polling fragment,
cancel, retry (whole or the failed items), and deleting finished jobs."""

from __future__ import annotations

import contextlib

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for

from headway.store import FINAL_STATUSES
from headway.web import (
    check_new_job,
    client_address,
    current_owner,
    is_htmx,
    load_job,
    load_job_detail,
    load_view,
    reap_if_stale,
    services,
)
from headway.web.views import render_job_progress
from jobs import control, kinds

bp = Blueprint("pages", __name__)


def render_progress(job_id: str, *, polling: bool = False) -> str:
    """The visitor's job's progress region, the same partial for the page, SSE and polling."""
    return render_progress_of(*load_job_detail(job_id), polling=polling)


def render_progress_of(job, items, log_lines, *, polling=False, shared=False) -> str:
    log_cap = services().settings.log_lines
    return render_job_progress(job, items, log_lines, log_cap, polling=polling, shared=shared)


def render_row(job, *, polling: bool = False) -> str:
    return render_template("partials/job_row.html", job=job, polling=polling)


def owner_jobs(limit: int = 100):
    owner = current_owner()
    jobs = services().store.list_for_owner(owner, limit) if owner else []
    return [reap_if_stale(job) for job in jobs]


@bp.get("/")
def index():
    """The job kinds and the visitor's recent jobs."""
    return render_template("index.html", kinds=kinds.registry().values(), jobs=owner_jobs(10))


# The job list's filters: the statuses each one shows ("" shows all).
LIST_FILTERS = {
    "": None,
    "active": frozenset({"queued", "running", "retrying"}),
    "finished": FINAL_STATUSES,
    "succeeded": frozenset({"succeeded"}),
    "failed": frozenset({"failed", "interrupted"}),
    "cancelled": frozenset({"cancelled"}),
}
FILTER_LABELS = {
    "": "All",
    "active": "Queued or running",
    "finished": "Finished",
    "succeeded": "Succeeded",
    "failed": "Failed or interrupted",
    "cancelled": "Cancelled",
}


def list_page() -> dict:
    """The job list's filter and page from the query string (400 for anything else), and
    that page of the visitor's jobs."""
    status = request.args.get("status", "")
    if status not in LIST_FILTERS:
        abort(
            400,
            f"Unknown status filter {status[:40]!r}; use one of: "
            f"{', '.join(repr(k) for k in LIST_FILTERS if k)}.",
        )
    raw_page = request.args.get("page", "1")
    number = int(raw_page) if raw_page.isascii() and raw_page.isdigit() else 0
    if not 0 < number < 10**6:
        abort(400, f"Not a page number: {raw_page[:20]!r} (pages count from 1).")
    owner = current_owner()
    per_page = services().settings.jobs_per_page
    jobs, more = (
        services().store.page_for_owner(
            owner, LIST_FILTERS[status], (number - 1) * per_page, per_page
        )
        if owner
        else ([], False)
    )
    if number > 1 and not jobs:
        abort(404, f"There is no page {number} of this list.")
    return {
        "jobs": [reap_if_stale(job) for job in jobs],
        "list_status": status,
        "list_page": number,
        "more": more,
        "filters": FILTER_LABELS,
    }


@bp.get("/jobs")
def job_list():
    """The visitor's jobs, newest first, filtered by status and paged; each row live, over
    one stream for the whole page."""
    return render_template("jobs/list.html", **list_page())


@bp.get("/jobs/rows")
def job_rows():
    """The job list's rows alone (same filter and page), for polling when the stream is
    unavailable."""
    return render_template("partials/job_rows.html", polling=True, **list_page())


@bp.get("/jobs/<job_id>")
def job_page(job_id: str):
    """The job page, complete from the record (a reload shows the current state), then live."""
    detail = load_job_detail(job_id)
    polling = services().settings.transport == "poll"
    return render_template(
        "jobs/show.html", job=detail[0], progress=render_progress_of(*detail, polling=polling)
    )


@bp.get("/jobs/<job_id>/progress")
def progress(job_id: str):
    """The progress fragment for polling; it stops asking for more once the job ends. The
    same bytes for every poll of a version, read and rendered once per change."""
    return load_view(job_id).polling_fragment(contextlib.nullcontext)


def _after_action(job_id: str, target_job_id: str | None = None) -> Response:
    target = target_job_id or job_id
    if is_htmx():
        if target_job_id:
            return Response(headers={"HX-Redirect": url_for("pages.job_page", job_id=target)})
        # A page that polls keeps polling: the answer replaces the region that asks.
        return Response(render_progress(job_id, polling=request.form.get("polling") == "1"))
    return redirect(url_for("pages.job_page", job_id=target), code=303)


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    """Cancel a queued or running job."""
    job = load_job(job_id)
    if job.finished:
        if is_htmx():
            return _after_action(job.id)
        abort(409, f"This job already ended ({job.status}); there is nothing to cancel.")
    control.cancel(job, services().store)
    return _after_action(job.id)


@bp.post("/jobs/<job_id>/retry")
def retry(job_id: str):
    """Start a new attempt of a failed, cancelled or interrupted job."""
    job = load_job(job_id)
    if job.status not in ("failed", "cancelled", "interrupted"):
        abort(
            409,
            f"Only a failed, cancelled or interrupted job can be retried; this one is "
            f"{job.status}.",
        )
    if job.retried_as:
        return _after_action(job.id, job.retried_as)
    return _start_retry(job, failed_items=False)


def _start_retry(job, *, failed_items: bool) -> Response:
    """A new linked attempt of `job` (of its failed items alone, or whole), made once however
    many requests ask at the same time: every one of them lands on it."""
    svc = services()
    address = client_address()
    try:
        new_id, made = control.retry_once(
            job,
            svc.store,
            before=lambda: check_new_job(job.owner, address),
            failed_items=failed_items,
        )
    except control.NothingToRetry:
        abort(409, "This job has no failed items that can be retried on their own.")
    except control.InputsGone:
        abort(409, "This job's files are no longer kept, so it cannot be retried; start a new job.")
    except control.RetryPending:
        abort(409, "A retry of this job is still being started; reload the page in a moment.")
    if made:
        svc.limits.record_job(job.owner, address, new_id)
    return _after_action(job.id, new_id)


@bp.post("/jobs/<job_id>/retry-failed")
def retry_failed(job_id: str):
    """Start a new attempt with only the inputs of the job's failed items."""
    job = load_job(job_id)
    if not job.finished:
        abort(409, f"This job is still {job.status}; its failed items can be retried once it ends.")
    if job.retried_items_as:
        return _after_action(job.id, job.retried_items_as)
    return _start_retry(job, failed_items=True)


def _finished_or_409(job) -> None:
    if not job.finished:
        abort(409, f"This job is still {job.status}; cancel it first, then delete it.")


@bp.get("/jobs/<job_id>/delete")
def confirm_delete(job_id: str):
    """Ask before deleting a finished job with its files."""
    job = load_job(job_id)
    _finished_or_409(job)
    return render_template("jobs/delete.html", job=job)


@bp.post("/jobs/<job_id>/delete")
def delete(job_id: str):
    """Delete a finished job: its record, log, items and every file of it, for good."""
    job = load_job(job_id)
    _finished_or_409(job)
    services().store.remove(job.id, job.owner)
    services().views.forget(job.id)
    target = url_for("pages.job_list", deleted=1)
    if is_htmx():
        return Response(headers={"HX-Redirect": target})
    return redirect(target, code=303)


def _finished_jobs(owner: str | None) -> list:
    if not owner:
        return []
    jobs, _ = services().store.page_for_owner(owner, FINAL_STATUSES, 0, 100_000)
    return jobs


@bp.get("/jobs/clear-finished")
def confirm_clear():
    """Ask before deleting every finished job of the visitor."""
    return render_template("jobs/clear.html", count=len(_finished_jobs(current_owner())))


@bp.post("/jobs/clear-finished")
def clear_finished():
    """Delete every finished job of the visitor, with its files; running ones stay."""
    store = services().store
    jobs = _finished_jobs(current_owner())
    for job in jobs:
        store.remove(job.id, job.owner)
        services().views.forget(job.id)
    target = url_for("pages.job_list", cleared=len(jobs))
    if is_htmx():
        return Response(headers={"HX-Redirect": target})
    return redirect(target, code=303)
