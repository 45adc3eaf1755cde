"""Server-Sent Events, fed by the hub: `/live`, the one stream a browser holds for all of its
tabs; and a job's own stream, `/jobs/<id>/events`, for scripts and `curl -N`.

A stream subscribes (registers with the process's hub) before it reads the record, so a
change between page render and stream start is never missed. It sends state, not events:
each message is the freshly rendered fragment, with the record's version.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterator

import redis
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    has_request_context,
    render_template,
    request,
    session,
)
from flask.ctx import RequestContext

from headway.hub import ChangeHub, HubUnavailable, Watcher
from headway.store import FINAL_STATUSES
from headway.web import client_address, current_owner, load_view, reap_if_stale, services
from headway.web.fanout import Fanout, Sink, quiet_spell
from headway.web.pages import render_row
from headway.web.renders import Rendered
from headway.web.views import JobView

log = logging.getLogger("headway.streams")
bp = Blueprint("streams", __name__)

LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the three SSE knows, and no others
RETRY_MS = 1000  # how long a browser waits before reconnecting a closed stream
RETRY = f"retry: {RETRY_MS}\n\n".encode()
KEEPALIVE = b": keepalive\n\n"
MAX_LIVE_JOBS = 200  # jobs one browser's stream may watch at once
WATCHED = re.compile(r"([0-9a-f]{32})(?::([0-9]{1,15}))?")


def _clean(value: object) -> str:
    """Event names and ids must not carry line breaks: they would end the field."""
    return str(value).replace("\r", "").replace("\n", "")


def sse(event: str | None, data: str, event_id: object = None) -> str:
    """One SSE message; multi-line data becomes several `data:` lines."""
    head = "" if event_id is None else f"id: {_clean(event_id)}\n"
    if event:
        head += f"event: {_clean(event)}\n"
    if "\n" in data or "\r" in data:  # (most are one line: the partials are, see views.py)
        data = "\ndata: ".join(LINE_BREAK.split(data))
    return f"{head}data: {data}\n\n"


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


class _Rerouted(RequestContext):
    """Another context of a request Flask has routed already: routing is not done again.

    Matching a URL costs more than the rest of a context, and leaves behind a reference
    cycle (werkzeug's matcher is a recursive closure) that only the garbage collector
    frees: with a context for every change a stream renders, collections came every
    second, and their pauses held up every stream.
    """

    def match_request(self) -> None:
        if self.request.url_rule is None:
            super().match_request()


def _request_context():
    """A fresh context of the current request, for rendering between yields: the same
    request and session (as `RequestContext.copy` does), so neither is parsed again.

    A stream holds no context while it waits: holding one across yields would tangle the
    context stacks of streams that share a thread. Where a context is active already (the
    fan-out holds one, in its own greenlet, for all it renders in a turn) it serves: what a
    stream renders with another's context is what it renders for every watcher anyway.
    """
    app = current_app._get_current_object()
    req, sess = request._get_current_object(), session._get_current_object()

    def context():
        if has_request_context():
            return contextlib.nullcontext()
        return _Rerouted(app, req.environ, request=req, session=sess)

    return context


class _Lease:
    """A stream's slots: per owner and per address (in Redis) and one of this process's;
    all released when it ends, however it ends."""

    def __init__(self, owner: str):
        svc = services()
        self.keepalive = svc.settings.keepalive_seconds
        self._release_slot = svc.caps.take("stream")
        try:
            self.lease = svc.limits.open_stream(owner, client_address())
        except BaseException:
            self._release_slot()
            raise

    def release(self) -> None:
        self._release_slot()
        self.lease.release()

    def response(self, generate: Iterator[bytes]) -> Response:
        """The stream's response; its slots go when the server closes it, even if it was
        never iterated (a browser that left before the first byte)."""
        response = _stream(generate)
        response.call_on_close(self.release)
        return response


def stream_framing(view: JobView, html: str, base: int | None) -> bytes:
    """A job's own stream: `progress` (the whole region) or `delta` (out-of-band swaps from
    the version the stream sent last), each with the version as its id; the final state's
    message is followed by `done` (`done_event`)."""
    message = sse("progress" if base is None else "delta", html, view.version)
    if view.state.finished:
        message += done_event(view)
    return message.encode()


def done_event(view: JobView) -> str:
    """The job's stream ends: `done`, with the final version as its id and the job's final
    status as its data. The state itself came in the message before it."""
    return sse("done", view.state.status, view.version)


def live_framing(view: JobView, html: str, base: int | None) -> bytes:
    """`/live`: "<id> <version> <final> <base>" on the first line (base "-" for the whole
    region, else the version the out-of-band swaps start from), the HTML after it."""
    state = view.state
    head = f"{state.id} {view.version} {int(state.finished)} {'-' if base is None else base}"
    return sse("job", f"{head}\n{html}").encode()


def _fresh_since(hub: ChangeHub, job_id: str, registered: float) -> float:
    """For a stream's first look, how fresh the job's view must be: one read since the
    stream registered, or since the job's last change notice if that came earlier (such a
    read holds every change until now). So streams that arrive together are served the
    view the process holds, rather than each reading the job again under the views' lock,
    which the fan-out takes for every change: of 10,000 streams arriving in the bench,
    9,960 queued for it (the longest for 11-15 s), and 401 since (at most 0.75 s)."""
    return min(registered, hub.fresh_after(job_id))


def _wait(watcher: Watcher, sink: Sink | None, lease: _Lease, deadline: float, fanout: Fanout):
    """Wait for a change: its ids (as `Watcher.wait` returns them), or None once a keepalive
    is due or the stream's `deadline` has come.

    A keepalive falls due after a quiet spell (`quiet_spell`). A stream with a sink leaves
    its keepalive to the fan-out (`Fanout.keep`), which may write to it meanwhile: the
    stream is not idle while it does, so its quiet spell starts again with each of those
    writes. Then whatever the fan-out left half written is finished, before the stream
    writes anything of its own.
    """
    now = time.monotonic()
    if sink is None:
        until = min(now + quiet_spell(lease.keepalive), deadline)
        return watcher.wait(max(0.0, until - now))
    sink.since = now
    fanout.keep(watcher)
    woken = watcher.wait(max(0.0, deadline - now))
    sink.flush()
    return woken


@bp.get("/jobs/<job_id>/events")
def job_events(job_id: str):
    """The job's live stream: `progress` or `delta` events, the last of them followed by one
    `done` event, then the end."""
    svc = services()
    svc.hub.ensure_ready()
    job = load_view(job_id).state
    lease = _Lease(job.owner)
    last_seen = parse_last_event_id(request.headers.get("Last-Event-ID"))

    context = _request_context()
    sent = {job.id: last_seen}  # the version this stream has sent (its sink's too)
    sink = Sink.for_request(request.environ, stream_framing, sent, context, lease.keepalive)
    if sink is not None:
        sink.ends = True

    def generate() -> Iterator[bytes]:
        try:
            yield RETRY  # headers and a first byte go out at once
            with svc.hub.watch(job_ids=[job.id], sink=sink) as watcher:
                deadline = time.monotonic() + svc.settings.stream_max_seconds
                fresh_since = _fresh_since(svc.hub, job.id, watcher.changed_at)
                while True:
                    if sink is not None and sink.ended:
                        return  # the fan-out sent the final state
                    view = svc.views.get([job.id], fresh_since, context).get(job.id)
                    if view is None:
                        return
                    message = view.message(stream_framing, sent[job.id], context)
                    if message is not None:
                        yield message
                        sent[job.id] = view.version
                    if view.state.finished:
                        if message is None:  # it resumed from the final version
                            yield done_event(view).encode()
                        return
                    if time.monotonic() >= deadline:
                        return  # the browser reconnects with Last-Event-ID
                    woken = _wait(watcher, sink, lease, deadline, svc.hub.fanout)
                    if woken is None:
                        yield KEEPALIVE
                        # Quiet for a while: look again (its worker may have died), sharing
                        # the look with the job's other streams.
                        fresh_since = time.monotonic() - lease.keepalive / 2
                    else:
                        fresh_since = watcher.changed_at
        except (redis.RedisError, HubUnavailable) as exc:
            log.warning("job %s: stream ended, redis unavailable: %s", job.id, exc)
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


def parse_watched(values: list[str]) -> dict[str, int | None]:
    """`?job=<id>:<version>` (version optional) as {id: version}; 400 for anything else."""
    if len(values) > MAX_LIVE_JOBS:
        abort(400, f"A stream watches at most {MAX_LIVE_JOBS} jobs.")
    watched: dict[str, int | None] = {}
    for value in values:
        match = WATCHED.fullmatch(value)
        if match is None:
            abort(400, f"Not a job to watch: {value[:40]!r} (expected <job id>:<version>).")
        watched[match[1]] = int(match[2]) if match[2] else None
    return watched


def _render_live_row(job_id: str, context) -> Callable[[float], Rendered | None]:
    """A job's list row addressed to it (`event: row`), and its notice once it has ended."""

    def render(read_at: float) -> Rendered | None:
        with context():
            state = services().store.get(job_id)
            if state is None:
                return None
            state = reap_if_stale(state)
            row = sse("row", f"{state.id} {state.version}\n{render_row(state)}").encode()
            notice = b""
            if state.finished:
                notice = sse("notice", render_template("partials/notice.html", job=state)).encode()
        return Rendered(read_at, state.version, state.status, state.finished, row, notice)

    return render


@bp.get("/live")
def live():
    """The browser's one stream, shared by all of its tabs (static/headway-live.js).

    `?job=<id>:<version>` for each job a tab shows (the version it has, if any): its
    progress region whenever it is newer, its final state always; `?rows=1` while a tab
    shows the job list: every row of the visitor's jobs that changed, and a notice when a
    job ends. Jobs that are not the visitor's are left out, exactly like unknown ones.
    """
    owner = current_owner()
    svc = services()
    wanted = parse_watched(request.args.getlist("job"))
    rows = request.args.get("rows") == "1"
    svc.hub.ensure_ready()
    lease = _Lease(owner)
    context = _request_context()
    sent: dict[str, int | None] = {}  # the version of each job this stream has sent
    sink = Sink.for_request(request.environ, live_framing, sent, context, lease.keepalive)
    if sink is not None:
        sink.rows = rows

    def generate() -> Iterator[bytes]:
        try:
            yield RETRY
            with svc.hub.watch(owner=owner, sink=sink) as watcher:
                # Read after subscribing, as every stream does: which jobs are the owner's.
                owned = {j.id for j in svc.store.get_many(list(wanted)) if j.owned_by(owner)}
                sent.update({job_id: wanted[job_id] for job_id in owned})
                job_statuses: dict[str, str] = {}
                statuses: dict[str, str] = {}  # of rows, for notices
                row_sent: dict[str, int] = {}
                row_ids = [j.id for j in svc.store.list_for_owner(owner)] if rows else []
                deadline = time.monotonic() + svc.settings.stream_max_seconds
                fresh_since = watcher.changed_at
                not_before = {j: _fresh_since(svc.hub, j, fresh_since) for j in sent}
                changed: set[str] | None = None  # None: look at everything
                while True:
                    messages = []
                    look = [j for j in sorted(sent) if changed is None or j in changed]
                    views = svc.views.get(look, not_before, context)
                    for job_id in look:
                        view = views.get(job_id)
                        if view is None:  # removed meanwhile
                            del sent[job_id]
                            continue
                        job_statuses[job_id] = view.state.status
                        message = view.message(live_framing, sent[job_id], context)
                        if message is not None:
                            messages.append(message)
                            sent[job_id] = view.version
                    for job_id in row_ids:
                        if changed is not None and job_id not in changed:
                            continue
                        render = _render_live_row(job_id, context)
                        state = svc.renders.get("live-row", job_id, fresh_since, render)
                        if state is not None and state.version != row_sent.get(job_id):
                            row_sent[job_id] = state.version
                            messages.append(_row_messages(job_id, state, statuses))
                    if messages:
                        yield b"".join(messages)
                    if time.monotonic() >= deadline:
                        return  # the browser reconnects, saying which versions it has
                    woken = _wait(watcher, sink, lease, deadline, svc.hub.fanout)
                    if woken is None:
                        yield KEEPALIVE
                        # Quiet for a while: look at the unfinished ones again (a worker may
                        # have died), sharing the look with the owner's other streams.
                        changed = {
                            i
                            for i, st in (*job_statuses.items(), *statuses.items())
                            if st not in FINAL_STATUSES
                        }
                        fresh_since = not_before = time.monotonic() - lease.keepalive / 2
                        continue
                    fresh_since = not_before = watcher.changed_at
                    ids, everything = woken
                    changed = None if everything else ids
                    if rows and (everything or not ids <= set(row_ids)):
                        row_ids = [j.id for j in svc.store.list_for_owner(owner)]
                        for job_id in ids - set(row_sent):  # created since: new to this page
                            statuses.setdefault(job_id, "queued")
        except (redis.RedisError, HubUnavailable) as exc:
            log.warning("live stream ended, redis unavailable: %s", exc)
        finally:
            lease.release()

    return lease.response(generate())
