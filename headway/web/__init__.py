"""The web side: services shared by the views, owner identity, headers and error pages."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time

import redis
from flask import Flask, abort, current_app, jsonify, render_template, request, session
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from headway.connection import subscriber_client
from headway.hub import ChangeHub, HubUnavailable
from headway.limits import LimitExceeded, Limits
from headway.settings import Settings
from headway.store import ItemProgress, JobState, JobStore
from headway.web.renders import SharedRenders
from headway.web.views import JobViews

log = logging.getLogger("headway.web")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)


@dataclasses.dataclass
class Services:
    settings: Settings
    store: JobStore
    hub: ChangeHub
    limits: Limits
    renders: SharedRenders
    views: JobViews


def services() -> Services:
    return current_app.extensions["headway"]


def is_htmx() -> bool:
    """The one place that decides whether a request came from htmx."""
    return request.headers.get("HX-Request") == "true"


def current_owner() -> str | None:
    return session.get("owner")


def ensure_owner() -> None:
    """Give every visitor an owner identity in the signed, HttpOnly, SameSite session cookie."""
    if "owner" not in session:
        session.permanent = True
        session["owner"] = secrets.token_urlsafe(24)


def load_job(job_id: str) -> JobState:
    """The visitor's job, or 404 (unknown, malformed and foreign ids look the same).

    A running job whose worker stopped beating is marked interrupted right here, so a page
    never shows a dead job as running, even when no consumer is left to reap it.
    """
    store = services().store
    job = store.get_owned(job_id, current_owner())
    if job is None:
        abort(404)
    return reap_if_stale(job)


def load_job_detail(job_id: str) -> tuple[JobState, list[ItemProgress], list[dict]]:
    """`load_job` with the job's item bars and log lines, read in the same round trip."""
    store = services().store
    job, items, log_lines = store.get_detail(job_id)
    if job is None or not job.owned_by(current_owner()):
        abort(404)
    if reap_if_stale(job) is not job:  # just reaped: read its last words too
        job, items, log_lines = store.get_detail(job_id)
    return job, items, log_lines


def reap_if_stale(job: JobState) -> JobState:
    store = services().store
    timeout = store.settings.heartbeat_timeout
    stale = job.status == "running" and (job.heartbeat or 0) < time.time() - timeout
    if stale and store.mark_interrupted_if_stale(job.id):
        return store.get(job.id) or job
    return job


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def error_response(status: int, title: str, message: str, headers: dict | None = None):
    if wants_json():
        response = jsonify(error=title, message=message)
    elif is_htmx() or request.path.endswith(("/events", "/progress", "/live")):
        response = current_app.response_class(
            render_template("partials/error.html", title=title, message=message),
            mimetype="text/html",
        )
    else:
        response = current_app.response_class(
            render_template("error.html", title=title, message=message), mimetype="text/html"
        )
    response.status_code = status
    response.headers.update(headers or {})
    return response


def security_headers(response):
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def register_errors(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {
            404: "There is no such page, or it is not yours to see.",
            413: "The upload is larger than this server accepts.",
        }
        response = error_response(
            exc.code or 500, exc.name, messages.get(exc.code, exc.description or exc.name)
        )
        if exc.code == 405:
            response.headers["Allow"] = ", ".join(exc.valid_methods or [])
        return response

    @app.errorhandler(CSRFError)
    def csrf_error(exc: CSRFError):
        return error_response(
            400, "Form expired or forged", f"{exc.description} Reload the page and try again."
        )

    @app.errorhandler(LimitExceeded)
    def limit_exceeded(exc: LimitExceeded):
        return error_response(429, "Slow down", str(exc), {"Retry-After": str(exc.retry_after)})

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(HubUnavailable)
    def redis_down(exc):
        log.error("redis unavailable for %s %s: %s", request.method, request.path, exc)
        return error_response(
            503,
            "Temporarily unavailable",
            "Headway cannot reach its job store right now. Running jobs keep working; "
            "try again in a few seconds.",
            {"Retry-After": "5"},
        )


def init_app(app: Flask, settings: Settings, client: redis.Redis) -> None:
    from headway.web import api, files, pages, streams, uploads
    from headway.web.format import register_filters

    store = JobStore(client, settings)
    app.extensions["headway"] = Services(
        settings=settings,
        store=store,
        hub=ChangeHub(subscriber_client(settings.redis_url)),
        limits=Limits(client, settings),
        renders=SharedRenders(),
        views=JobViews(store),
    )
    app.request_class = uploads.UploadRequest
    app.url_map.merge_slashes = False  # "files//etc/passwd" is a 404, not a redirect
    app.jinja_env.trim_blocks = True  # smaller fragments on the wire
    app.jinja_env.lstrip_blocks = True
    app.before_request(ensure_owner)
    app.before_request(uploads.refuse_oversized_upload)  # before CSRF reads the body
    app.after_request(security_headers)
    register_errors(app)
    register_filters(app)
    for module in (pages, uploads, streams, files, api):
        app.register_blueprint(module.bp)

    @app.context_processor
    def globals_for_templates():
        return {"transport": settings.transport}
