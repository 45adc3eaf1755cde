"""Pages: the index, the job list, the job page and its polling fragment, cancel and retry."""

from __future__ import annotations

import contextlib

from flask import Blueprint, Response, abort, redirect, render_template, request, url_for

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


@bp.get("/jobs")
def job_list():
    """All of the visitor's jobs, each row live, over one stream for the whole page."""
    return render_template("jobs/list.html", jobs=owner_jobs())


@bp.get("/jobs/rows")
def job_rows():
    """The job list's rows alone, for polling when the stream is unavailable."""
    return render_template("partials/job_rows.html", jobs=owner_jobs(), polling=True)


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
    svc = services()
    address = client_address()
    try:
        # Concurrent clicks make one attempt; all of them land on it.
        new_id, made = control.retry_once(
            job, svc.store, before=lambda: check_new_job(job.owner, address)
        )
    except control.InputsGone:
        abort(409, "This job's files are no longer kept, so it cannot be retried; start a new job.")
    except control.RetryPending:
        abort(409, "A retry of this job is still being started; reload the page in a moment.")
    if made:
        svc.limits.record_job(job.owner, address, new_id)
    return _after_action(job.id, new_id)
