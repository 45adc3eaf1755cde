"""What a web process knows of the jobs its streams watch, region by region, and the
messages that bring a stream up to date: the change since the version before, or the
whole state.

The job page is five regions: the status line, the header (bar, stages, facts), the outcome
(problems, downloads or Retry, Cancel), the item bars and the log. When a job changes, one
read (of every job that changed together, in one round trip) fetches the record, the items
changed since the version held (each item carries the version that last changed it) and
the log lines added since; one render draws the header, and whichever of the status line,
the outcome, those items and those lines changed, as out-of-band swaps. A stream that last
sent the version before gets that change; any other (new, resumed, or fallen behind) gets
the whole state, rendered once per version when first asked for. Every message is framed
once and sent as the same bytes to every stream: the work per change is per process, never per
watcher.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable

from flask import render_template

from headway.store import ItemProgress, JobState, JobStore

OCCASIONAL_REGIONS = ("job_summary", "job_outcome")  # templates/partials/<name>.html
Framing = Callable[["JobView", str, bool], bytes]  # (view, html, is a change) -> message


@dataclasses.dataclass
class JobView:
    """One version of a job's page, and the change that led to it from `base`."""

    read_at: float  # monotonic time the read began: it holds every change notified before
    state: JobState
    items: dict[int, ItemProgress]
    log_lines: list[dict]  # oldest first, the newest `log_cap`
    log_cap: int
    base: int | None  # the version `change` starts from (None: no change known)
    change: str  # out-of-band swaps that turn the page at `base` into this version
    # The regions that change now and then, as rendered for this version: the next change
    # carries them only if they differ.
    occasional: dict[str, str] = dataclasses.field(default_factory=dict)
    _messages: dict[tuple[str, bool], bytes | str] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def version(self) -> int:
        return self.state.version

    def message(self, framing: Framing, sent: int | None, context) -> bytes | None:
        """What a stream that last sent version `sent` needs: nothing, the change, or the
        whole state (rendered on first use, in `context`)."""
        if sent == self.version:
            return None
        as_change = self.base is not None and sent == self.base
        key = (framing.__name__, as_change)
        message = self._messages.get(key)
        if message is None:
            with self._lock:
                message = self._messages.get(key)
                if message is None:
                    html = self.change if as_change else self._whole(context)
                    message = self._messages[key] = framing(self, html, as_change)
        return message

    def polling_fragment(self, context) -> str:
        """The whole region as polling asks for it (it asks again while the job runs); the
        same for every visitor, so rendered once per version."""
        fragment = self._messages.get(("polling", False))
        if fragment is None:
            with self._lock, context():
                fragment = render_job_progress(
                    self.state,
                    _ordered(self.items),
                    self.log_lines,
                    self.log_cap,
                    polling=True,
                    shared=True,
                )
                self._messages[("polling", False)] = fragment
        return fragment

    def _whole(self, context) -> str:
        with context():
            return render_job_progress(
                self.state, _ordered(self.items), self.log_lines, self.log_cap, shared=True
            )


def render_job_progress(job, items, log_lines, log_cap, *, polling=False, shared=False) -> str:
    """The whole progress region, as the page, the polling fragment and the streams show it.
    `shared`: the same bytes for every watcher, so no per-visitor CSRF token in forms (htmx
    sends the page's token as a header)."""
    return _render(
        "job_progress",
        job=job,
        items=items,
        log_lines=log_lines,
        log_cap=log_cap,
        polling=polling,
        shared=shared,
    )


def _render(partial: str, **context) -> str:
    return render_template(f"partials/{partial}.html", **context)


def _ordered(items: dict[int, ItemProgress]) -> list[ItemProgress]:
    return [items[index] for index in sorted(items)]


class JobViews:
    """The process's views by job id, refreshed no more than once per change."""

    def __init__(self, store: JobStore, max_entries: int = 4096):
        self.store = store
        self.max_entries = max_entries
        self._views: dict[str, JobView] = {}
        self._lock = threading.Lock()  # one refresh at a time; waiters reuse its result

    def get(self, job_ids: Iterable[str], not_before: float, context) -> dict[str, JobView]:
        """The views of `job_ids` read no earlier than `not_before` (monotonic); jobs that
        are gone are left out. Stale ones are read together, in one round trip."""
        job_ids = list(job_ids)
        views = self._fresh(job_ids, not_before)
        if len(views) < len(job_ids):
            with self._lock:
                views = self._fresh(job_ids, not_before)
                stale = [job_id for job_id in job_ids if job_id not in views]
                if stale:
                    views.update(self._refresh(stale, context))
        return views

    def forget(self, job_id: str) -> None:
        """Drop what this process holds of a job (removed here: its change notice may still
        be on its way)."""
        with self._lock:
            self._views.pop(job_id, None)

    def _fresh(self, job_ids: list[str], not_before: float) -> dict[str, JobView]:
        views = {}
        for job_id in job_ids:
            view = self._views.get(job_id)
            if view is not None and view.read_at >= not_before:
                views[job_id] = view
        return views

    def _refresh(self, job_ids: list[str], context) -> dict[str, JobView]:
        from headway.web import reap_if_stale

        read_at = time.monotonic()
        held = {job_id: self._views.get(job_id) for job_id in job_ids}
        changes = self.store.read_since(
            {j: None if v is None else (v.version, v.state.log_total) for j, v in held.items()}
        )
        fresh: dict[str, JobView] = {}
        with context():
            for job_id, change in changes.items():
                if change is not None and reap_if_stale(change.state) is not change.state:
                    # Just marked interrupted: read its last words too.
                    change = self.store.read_since({job_id: _seen(held[job_id])})[job_id]
                if change is None:
                    self._views.pop(job_id, None)
                    continue
                view = held[job_id]
                if view is not None and change.state.version == view.version:
                    view.read_at = read_at
                    fresh[job_id] = view
                    continue
                fresh[job_id] = self._views[job_id] = _next_view(
                    view, change, read_at, self.store.settings.log_lines
                )
        while len(self._views) > self.max_entries:
            self._views.pop(next(iter(self._views)))
        return fresh


def _seen(view: JobView | None) -> tuple[int, int] | None:
    return None if view is None else (view.version, view.state.log_total)


def _next_view(old: JobView | None, change, read_at: float, cap: int) -> JobView:
    """The view after `change`, with the out-of-band swaps that lead there from `old`."""
    state = change.state
    items = dict(old.items) if old else {}
    new_items = old is None or any(item.index not in items for item in change.items)
    for item in change.items:
        items[item.index] = item
    log_lines = ((old.log_lines if old else []) + change.log_lines)[-cap:]
    occasional = {
        name: _render(name, job=state, shared=True, oob=True) for name in OCCASIONAL_REGIONS
    }
    if old is None:
        return JobView(read_at, state, items, log_lines, cap, None, "", occasional)
    # The header (bar, facts, the page's data) changes with every version.
    parts = [_render("job_header", job=state, shared=True, oob=True)]
    parts += [html for name, html in occasional.items() if html != old.occasional.get(name)]
    if new_items:
        parts.append(_render("job_items", items=_ordered(items), oob=True))
    else:
        parts += [_render("job_item", item=item, oob=True) for item in change.items]
    if change.log_lines:
        if not old.log_lines or len(change.log_lines) >= cap:
            parts.append(_render("job_log", log_lines=log_lines, log_cap=cap, oob=True))
        else:
            lines = "".join(
                _render("job_log_line", line=line) for line in reversed(change.log_lines)
            )
            parts.append(f'<ol hx-swap-oob="afterbegin:#job-log">{lines}</ol>')
    return JobView(read_at, state, items, log_lines, cap, old.version, "".join(parts), occasional)
