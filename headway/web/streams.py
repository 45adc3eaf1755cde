"""Server-Sent Events: one stream per job page, one per job list, both fed by the hub.

A stream subscribes (registers with the process's hub) before it reads the record, so a
change between page render and stream start is never missed. It sends state, not events:
each message is the freshly rendered fragment, its id the record's version.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator

import redis
from flask import Blueprint, Response, current_app, render_template, request

from headway.hub import HubUnavailable
from headway.store import FINAL_STATUSES
from headway.web import client_address, current_owner, load_job, reap_if_stale, services
from headway.web.pages import render_progress_of, render_row
from headway.web.renders import Rendered

log = logging.getLogger("headway.streams")
bp = Blueprint("streams", __name__)

LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the three SSE knows, and no others
RETRY_MS = 1000  # how long a browser waits before reconnecting a closed stream
RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEPALIVE = b": keepalive\n\n"


def _clean(value: object) -> str:
    """Event names and ids must not carry line breaks: they would end the field."""
    return str(value).replace("\r", "").replace("\n", "")


def sse(event: str | None, data: str, event_id: object = None) -> str:
    """One SSE message; multi-line data becomes several `data:` lines."""
    lines = [] if event_id is None else [f"id: {_clean(event_id)}"]
    if event:
        lines.append(f"event: {_clean(event)}")
    lines += [f"data: {line}" for line in LINE_BREAK.split(data)]
    return "\n".join(lines) + "\n\n"


def parse_last_event_id(value: str | None) -> int | None:
    """The version a reconnecting browser last saw; anything malformed is ignored."""
    if value and value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    return None


def _stream(generate: Iterator[bytes]) -> Response:
    return Response(
        generate,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _request_context():
    """A fresh context of the current request, for rendering between yields.

    A stream holds no context while it waits: holding one across yields would tangle the
    context stacks of streams that share a thread.
    """
    app, environ = current_app._get_current_object(), dict(request.environ)
    return lambda: app.request_context(environ)


class _Lease:
    """A stream's slots: per owner and per address (in Redis, renewed while the stream
    lives) and one of this process's; all released when it ends, however it ends."""

    def __init__(self, owner: str):
        svc = services()
        self.keepalive = svc.settings.keepalive_seconds
        self._release_slot = svc.caps.take("stream")
        try:
            self.lease = svc.limits.open_stream(owner, client_address())
        except BaseException:
            self._release_slot()
            raise

    def renew(self) -> None:
        """Extend the slots, at most once per keepalive interval; call it on every pass.

        A busy stream sends no keepalives, and its slots must not lapse for that.
        """
        self.lease.renew(self.keepalive)

    def release(self) -> None:
        self._release_slot()
        self.lease.release()

    def response(self, generate: Iterator[bytes]) -> Response:
        """The stream's response; its slots go when the server closes it, even if it was
        never iterated (a browser that left before the first byte)."""
        response = _stream(generate)
        response.call_on_close(self.release)
        return response


def _render_job(job_id: str, context) -> Callable[[float], Rendered | None]:
    """How to read and render a job's message for every stream that watches it."""

    def render(read_at: float) -> Rendered | None:
        with context():
            state, items, log_lines = services().store.get_detail(job_id)
            if state is None:  # removed meanwhile
                return None
            if reap_if_stale(state) is not state:  # just reaped: read its last words too
                state, items, log_lines = services().store.get_detail(job_id)
            event = "done" if state.finished else "progress"
            html = render_progress_of(state, items, log_lines, shared=True)
        message = sse(event, html, state.version).encode()
        return Rendered(read_at, state.version, state.status, state.finished, message)

    return render


def _render_row(job_id: str, context) -> Callable[[float], Rendered | None]:
    """How to read and render a job's row (and its notice, should it have just ended)."""

    def render(read_at: float) -> Rendered | None:
        with context():
            state = services().store.get(job_id)
            if state is None:
                return None
            state = reap_if_stale(state)
            row = sse(f"job-{state.id}", render_row(state)).encode()
            notice = b""
            if state.finished:
                notice = sse("notice", render_template("partials/notice.html", job=state)).encode()
        return Rendered(read_at, state.version, state.status, state.finished, row, notice)

    return render


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """The job's live stream: `progress` events, then one `done` event, then the end."""
    job = load_job(job_id)
    svc = services()
    svc.hub.ensure_ready()
    lease = _Lease(job.owner)
    last_seen = parse_last_event_id(request.headers.get("Last-Event-ID"))

    render = _render_job(job.id, _request_context())

    def generate() -> Iterator[bytes]:
        try:
            yield RETRY  # headers and a first byte go out at once
            with svc.hub.watch(job_ids=[job.id]) as watcher:
                deadline = time.monotonic() + svc.settings.stream_max_seconds
                sent = last_seen
                fresh_since = watcher.changed_at
                while True:
                    state = svc.renders.get("job", job.id, fresh_since, render)
                    if state is None:
                        return
                    # A final state is always sent: it is what closes the browser's stream.
                    if state.finished or sent is None or state.version > sent:
                        yield state.message
                        sent = state.version
                    if state.finished:
                        return
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return  # the browser reconnects with Last-Event-ID
                    keepalive = svc.settings.keepalive_seconds
                    if watcher.wait(min(keepalive, remaining)) is None:
                        yield KEEPALIVE
                        # Quiet for a while: look again (its worker may have died), sharing
                        # the look with the job's other streams.
                        fresh_since = time.monotonic() - keepalive / 2
                    else:
                        fresh_since = watcher.changed_at
                    lease.renew()
        except (redis.RedisError, HubUnavailable) as exc:
            log.warning("job %s: stream ended, redis unavailable: %s", job.id, exc)
        finally:
            lease.release()

    return lease.response(generate())


@bp.get("/events")
def owner_events():
    """The visitor's stream for list pages: `job-<id>` row events and `notice` events."""
    owner = current_owner()
    svc = services()
    svc.hub.ensure_ready()
    lease = _Lease(owner)

    context = _request_context()

    def generate() -> Iterator[bytes]:
        try:
            yield RETRY
            with svc.hub.watch(owner=owner) as watcher:
                deadline = time.monotonic() + svc.settings.stream_max_seconds
                statuses: dict[str, str] = {}
                sent: dict[str, int] = {}
                job_ids = [job.id for job in svc.store.list_for_owner(owner)]
                fresh_since = watcher.changed_at
                while True:
                    messages = []
                    for job_id in job_ids:
                        render = _render_row(job_id, context)
                        state = svc.renders.get("row", job_id, fresh_since, render)
                        if state is not None and state.version != sent.get(job_id):
                            sent[job_id] = state.version
                            messages.append(_row_messages(job_id, state, statuses))
                    if messages:
                        yield b"".join(messages)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    keepalive = svc.settings.keepalive_seconds
                    changed = watcher.wait(min(keepalive, remaining))
                    lease.renew()
                    if changed is None:
                        yield KEEPALIVE
                        # Quiet for a while: look at the running ones again (a worker may
                        # have died), sharing the look with the owner's other streams.
                        job_ids = [i for i, st in statuses.items() if st not in FINAL_STATUSES]
                        fresh_since = time.monotonic() - keepalive / 2
                        continue
                    fresh_since = watcher.changed_at
                    ids, everything = changed
                    if everything:
                        ids = [job.id for job in svc.store.list_for_owner(owner)]
                    job_ids = sorted(ids)
                    for job_id in job_ids:  # a job created elsewhere: known from now on
                        statuses.setdefault(job_id, "queued")
        except (redis.RedisError, HubUnavailable) as exc:
            log.warning("owner stream ended, redis unavailable: %s", exc)
        finally:
            lease.release()

    return lease.response(generate())


def _row_messages(job_id: str, state: Rendered, statuses: dict[str, str]) -> bytes:
    """The row's event, with the "job finished" notice if this stream saw the job run."""
    was = statuses.get(job_id)
    statuses[job_id] = state.status
    if state.notice and was is not None and was not in FINAL_STATUSES:
        return state.message + state.notice
    return state.message
