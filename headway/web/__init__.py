"""The web side: services shared by the views, owner identity, headers and error pages."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import secrets
import time

import redis
from flask import Flask, abort, current_app, jsonify, render_template, request, session
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException

from headway.connection import subscriber_client
from headway.hub import ChangeHub, HubUnavailable
from headway.limits import LimitExceeded, Limits, ProcessCaps
from headway.settings import Settings
from headway.storage import StorageError
from headway.store import ItemProgress, JobState, JobStore
from headway.web.checks import CheckLimits, CheckPool, shared_pool
from headway.web.fanout import Fanout
from headway.web.renders import SharedRenders
from headway.web.views import CompactPartials, FlatGlobals, JobView, JobViews, Rows, fact_keys

log = logging.getLogger("headway.web")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "object-src 'none'; frame-ancestors 'none'"
)
# What every response carries, unless its view set its own (streams and downloads set their
# own Cache-Control): (lower-cased name, header).
SECURITY_HEADERS = tuple(
    (name.lower(), (name, value))
    for name, value in (
        ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("X-Frame-Options", "DENY"),
        ("Cache-Control", "no-store"),
    )
)


@dataclasses.dataclass
class Services:
    settings: Settings
    store: JobStore
    hub: ChangeHub
    limits: Limits
    renders: SharedRenders
    views: JobViews
    caps: ProcessCaps
    checks: CheckPool
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def services() -> Services:
    return current_app.extensions["headway"]


def is_htmx() -> bool:
    """The one place that decides whether a request came from htmx."""
    return request.headers.get("HX-Request") == "true"


def current_owner() -> str | None:
    return session.get("owner")


def client_address() -> str:
    """The client's address, which limits count by (a new cookie does not change it).

    `X-Forwarded-For` counts only when the peer is a trusted proxy: then the client is the
    rightmost hop that is not one of ours. IPv6 clients count by their /64, which one
    machine usually holds whole.
    """
    peer = request.remote_addr or ""
    trusted = services().trusted_proxies
    if trusted and _is_trusted(peer, trusted):
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if not _is_trusted(hop, trusted):
                peer = hop
                break
    address = _ip(peer)
    if address is None:
        return "unknown"
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address, an IPv4-mapped IPv6 address as the IPv4 one it is; None if malformed."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return getattr(address, "ipv4_mapped", None) or address


def _is_trusted(peer: str, trusted) -> bool:
    address = _ip(peer)
    return address is not None and any(address in network for network in trusted)


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


def load_view(job_id: str) -> JobView:
    """The visitor's job as this process's shared view of it, or 404: read from Redis only
    when the job changed since the process last read it (the hub says when), so polling a
    job costs no round trip while it does not change.

    A running job whose heartbeat stopped is looked at again (and so marked interrupted)
    whatever the view says: a dead worker sends no change notice.
    """
    svc = services()
    svc.hub.start()
    views = svc.views.get([job_id], svc.hub.fresh_after(job_id), contextlib.nullcontext)
    view = views.get(job_id)
    if view is not None and _heartbeat_lost(view.state):
        view = svc.views.get([job_id], time.monotonic(), contextlib.nullcontext).get(job_id)
    if view is None or not view.state.owned_by(current_owner()):
        abort(404)
    return view


def _heartbeat_lost(job: JobState) -> bool:
    timeout = services().settings.heartbeat_timeout
    return job.status == "running" and (job.heartbeat or 0) < time.time() - timeout


def load_job_detail(job_id: str) -> tuple[JobState, list[ItemProgress], list[dict]]:
    """`load_job` with the job's item bars and log lines, read in the same round trip."""
    store = services().store
    job, items, log_lines = store.get_detail(job_id)
    if job is None or not job.owned_by(current_owner()):
        abort(404)
    if reap_if_stale(job) is not job:  # just reaped: read its last words too
        job, items, log_lines = store.get_detail(job_id)
    return job, items, log_lines


def check_new_job(owner: str | None, address: str) -> None:
    """Raise LimitExceeded (429, or 503 for the queue's cap) if no job may start now."""
    from jobs.queue import huey

    svc = services()
    svc.limits.check_queue(huey.pending_count())
    if owner is not None:
        svc.limits.check_job(
            owner,
            running_now=svc.store.owner_running_count(owner),
            address=address,
            get_many=svc.store.get_many,
        )


def reap_if_stale(job: JobState) -> JobState:
    if _heartbeat_lost(job) and services().store.mark_interrupted_if_stale(job.id):
        return services().store.get(job.id) or job
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


class SecurityHeaders:
    """WSGI middleware: each response gets the `SECURITY_HEADERS` it lacks as it starts.

    An `after_request` hook did the same through werkzeug's `Headers`, whose every lookup
    and set walks the list and checks the value again: 12 µs a response here, against 2-3
    µs for this, of the 230 µs the application spent answering a poll of a job's JSON.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            present = {name.lower() for name, _ in headers}
            headers.extend(header for name, header in SECURITY_HEADERS if name not in present)
            return start_response(status, headers, exc_info)

        return self.app(environ, start)


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
        title = "Slow down" if exc.status == 429 else "Busy"
        return error_response(exc.status, title, str(exc), {"Retry-After": str(exc.retry_after)})

    def unavailable(what: str, exc: Exception, message: str):
        log.error("%s unavailable for %s %s: %s", what, request.method, request.path, exc)
        return error_response(503, "Temporarily unavailable", message, {"Retry-After": "5"})

    @app.errorhandler(StorageError)
    def storage_down(exc):
        return unavailable(
            "storage",
            exc,
            "Headway cannot reach its file storage right now; try again in a few seconds.",
        )

    @app.errorhandler(redis.RedisError)
    @app.errorhandler(HubUnavailable)
    def redis_down(exc):
        return unavailable(
            "redis",
            exc,
            "Headway cannot reach its job store right now. Running jobs keep working; "
            "try again in a few seconds.",
        )


def compile_templates(app: Flask) -> None:
    """Compile every template now (gunicorn.conf.py, as a worker starts). Jinja compiles a
    template on its first use, in 1-12.5 ms here (the job's outcome, first shown when a job
    ends, the longest), and in the fan-out every stream the process feeds waited meanwhile."""
    for name in app.jinja_env.list_templates():
        app.jinja_env.get_template(name)


def init_app(app: Flask, settings: Settings, client: redis.Redis) -> None:
    from headway.web import api, files, pages, streams, uploads
    from headway.web.format import register_filters

    store = JobStore(client, settings)
    store.storage  # noqa: B018  (an S3 client is made now, at start, not on a first upload)
    hub, views = ChangeHub(subscriber_client(settings.redis_url)), JobViews(store)
    hub.views = views.notice  # views catch up from the notices, without reading
    hub.fanout = Fanout(views)  # streams that wait are written to straight from there
    app.extensions["headway"] = Services(
        settings=settings,
        store=store,
        hub=hub,
        limits=Limits(client, settings),
        renders=SharedRenders(),
        views=views,
        caps=ProcessCaps(settings),
        checks=shared_pool(
            CheckLimits(
                processes=max(1, settings.check_processes),
                seconds=settings.check_seconds,
                memory_bytes=settings.check_memory_mb * 1024**2,
                wait_seconds=settings.check_wait_seconds,
            )
        ),
        trusted_proxies=tuple(
            ipaddress.ip_network(p, strict=False) for p in settings.trusted_proxies
        ),
    )
    uploads.spool(app).sweep()  # what a crashed process left behind
    app.url_map.merge_slashes = False  # "files//etc/passwd" is a 404, not a redirect
    app.jinja_environment = FlatGlobals  # before the environment is made, just below
    app.jinja_loader = CompactPartials(app.root_path + "/" + app.template_folder)
    app.jinja_env.trim_blocks = True  # smaller fragments on the wire
    app.jinja_env.lstrip_blocks = True
    app.before_request(ensure_owner)
    app.before_request(uploads.before_upload)  # before CSRF could read any body
    app.wsgi_app = SecurityHeaders(app.wsgi_app)
    register_errors(app)
    register_filters(app)
    for module in (pages, uploads, streams, files, api):
        app.register_blueprint(module.bp)

    @app.context_processor
    def globals_for_templates():
        return {"transport": settings.transport}

    def can_retry_items(job: JobState) -> bool:
        from jobs import kinds

        kind = kinds.get(job.kind)
        return kind is not None and kind.retry_items

    app.jinja_env.globals["can_retry_items"] = can_retry_items
    app.jinja_env.globals["fact_keys"] = fact_keys
    rows = Rows(app.jinja_env)
    app.jinja_env.globals.update(item_bar=rows.item_bar, log_line=rows.log_line)
