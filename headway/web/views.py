"""What a web process knows of the jobs its streams watch, part by part, and the messages
that bring a stream up to date: the change since the version before, or the whole state.

The job page is made of parts: the status line, the meter (bar and percent), the stages,
each fact (counts, rate, time left...), the outcome (problems, downloads or Retry, Cancel),
each item bar and the log. When a job changes, its view applies the change the notice
carries (the update's fields, items and log lines: the hub hands in every notice, see
`headway/store.py`), with no read. Where the notices fall short (one was too big to carry
its change, or was lost with a connection), one read (of every job that changed together,
in one round trip) fetches the record, the items changed since the version held (each item
carries the version that last changed it) and the log lines added since. Each part is
rendered again only if a field it reads changed, and the change is the parts whose
markup differs from the version before, the changed items and the new log lines, as
out-of-band swaps. A view also keeps what the page looked like at the versions this process
read before it (`TRAIL` of them): a stream that fell behind (it was busy, or its socket was
full, while versions went by) or that resumes from one of those versions gets the change
since the version it has, made once for each such version when first asked for. Any other
(new, or resumed from a version this process never read) gets the whole state, rendered
once per version. Every message is framed once and sent as the same bytes to every stream:
the work per change is per process, never per watcher.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import operator
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import flask.templating
from flask import current_app
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup

from headway.store import Changes, ItemProgress, JobState, JobStore, Notice

log = logging.getLogger("headway.views")

# Parts sent when their markup changed (templates/partials/<name>.html), besides the facts.
PARTS = ("job_summary", "job_meter", "job_stages", "job_outcome")
# What the environment's trim_blocks and lstrip_blocks remove (the line break after a block
# or comment tag, the indentation before one), then every other line break.
TRIM_BLOCKS = re.compile(r"([%#]})\r?\n")
LSTRIP_BLOCKS = re.compile(r"^[ \t]+(\{[%#])", re.MULTILINE)
LINE_BREAKS = re.compile(r"[ \t]*[\r\n][ \t\r\n]*")
# Earlier versions a view can send the change from: 1.6 s of a job at 10 updates a second,
# about 2 KB each (their parts; items and log lines are not copied). A stream further
# behind gets the whole state.
TRAIL = 16


class CompactPartials(FileSystemLoader):
    """The templates folder, with every line break of a partial (and the indentation around
    it) read as one space, after what trim_blocks and lstrip_blocks take away: the regions
    and their parts come out on one line, as a browser shows them anyway (none holds
    preformatted text). A live message is then a fifth smaller, one SSE `data:` line
    instead of dozens, and nothing is spent on it per render.
    """

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        if template.startswith("partials/"):
            source = LSTRIP_BLOCKS.sub(r"\1", source)
            source = LINE_BREAKS.sub(" ", TRIM_BLOCKS.sub(r"\1", source))
        return source, filename, uptodate


class FlatGlobals(flask.templating.Environment):
    """Flask's environment, with each template's globals in one dict rather than a ChainMap
    over the environment's. Every render copies a template's globals into its context and
    lists their names; over a ChainMap those two walks were two thirds of a partial's
    render (9 of 14 µs), and a change renders several. The globals are all set before the
    first template loads, as Jinja asks (`Environment.make_globals`)."""

    def make_globals(self, d):
        return {**self.globals, **(d or {})}


class Rows:
    """Item bars and log lines, each rendered once for what it shows. A log line never
    changes and an item's bar only with its item, while every whole region (a page, a poll,
    a stream's first or last message) holds dozens to hundreds of them: the partials call
    `item_bar(item)` and `log_line(line)` (environment globals) instead of including
    `job_item.html` and `job_log_line.html`, and get what was rendered before for the same
    content. Those two read nothing else. Nothing is kept while templates auto-reload."""

    def __init__(self, env: Environment, size: int = 16384):
        self._env = env
        self._bar = functools.lru_cache(size)(self._render_bar)
        self._line = functools.lru_cache(size)(self._render_line)

    def item_bar(self, item: ItemProgress) -> Markup:
        return self._render_bar(item) if self._env.auto_reload else self._bar(item)

    def log_line(self, line: dict) -> Markup:
        key = tuple(line.items())
        return self._render_line(key) if self._env.auto_reload else self._line(key)

    def _render_bar(self, item: ItemProgress) -> Markup:
        return Markup(_render_in(self._env, "job_item", item=item))

    def _render_line(self, line: tuple) -> Markup:
        return Markup(_render_in(self._env, "job_log_line", line=dict(line)))


# (view, html, the version the change starts from or None for the whole state) -> message
Framing = Callable[["JobView", str, int | None], bytes]


@dataclasses.dataclass(frozen=True)
class Earlier:
    """An earlier version of a job's page, as much of it as a change from there needs: its
    parts, the log lines it had seen, and the items that changed in the next version read
    (None: items came, and the items region goes whole)."""

    version: int
    parts: dict[str, str]
    log_total: int
    items_after: frozenset[int] | None


@dataclasses.dataclass
class JobView:
    """One version of a job's page, and what the page showed at the versions read before."""

    read_at: float  # monotonic time the read began: it holds every change notified before
    state: JobState
    record: dict[str, str]  # the hash `state` was parsed from: a notice applies to it
    items: dict[int, ItemProgress]
    log_lines: list[dict]  # oldest first, the newest `log_cap`
    log_cap: int
    # The parts as rendered for this version, by name ("fact:<key>" for each fact): the next
    # change carries those that differ. And the fields of the job each part read.
    parts: dict[str, str] = dataclasses.field(default_factory=dict)
    reads: dict[str, Inputs] = dataclasses.field(default_factory=dict)
    earlier: tuple[Earlier, ...] = ()  # the versions read before, newest first: `base`'s first
    _messages: dict[tuple, bytes | str] = dataclasses.field(default_factory=dict)
    _lock: threading.RLock = dataclasses.field(default_factory=threading.RLock)

    @property
    def version(self) -> int:
        return self.state.version

    @property
    def base(self) -> int | None:
        """The version read just before this one (None: none was)."""
        return self.earlier[0].version if self.earlier else None

    def since(self, sent: int | None) -> int | None:
        """The version a message to a stream that has `sent` starts from: `sent`, if this
        view knows the change from there; None if it must be the whole state."""
        if sent is not None and any(e.version == sent for e in self.earlier):
            return sent
        return None

    def message(self, framing: Framing, sent: int | None, context) -> bytes | None:
        """What a stream that last sent version `sent` needs: nothing, the change since, or
        the whole state (rendered on first use, in `context`)."""
        if sent == self.version:
            return None
        base = self.since(sent)

        def make() -> bytes:
            html = self._whole(context) if base is None else self._change_from(base, context)
            return framing(self, html, base)

        return self.once((framing.__name__, base), make)

    def _change_from(self, base: int, context) -> str:
        """The out-of-band swaps from version `base` (one of `earlier`) to this one."""

        def make() -> str:
            depth = next(i for i, e in enumerate(self.earlier) if e.version == base)
            with context():
                return _change_since(self, self.earlier[: depth + 1])

        return self.once(("change", base), make)

    def polling_fragment(self, context) -> str:
        """The whole region as polling asks for it (it asks again while the job runs); the
        same for every visitor, so rendered once per version."""

        def render() -> str:
            with context():
                return render_job_progress(
                    self.state,
                    _ordered(self.items),
                    self.log_lines,
                    self.log_cap,
                    polling=True,
                    shared=True,
                )

        return self.once(("polling",), render)

    def once(self, key: tuple, make: Callable[[], bytes | str]) -> bytes | str:
        """What `make` returns for this version, made by the first to ask: the same for
        every watcher and visitor of this version (a message, a fragment, a JSON body)."""
        made = self._messages.get(key)
        if made is None:
            with self._lock:
                made = self._messages.get(key)
                if made is None:
                    made = self._messages[key] = make()
        return made

    def _whole(self, context) -> str:
        with context():
            return render_job_progress(
                self.state,
                _ordered(self.items),
                self.log_lines,
                self.log_cap,
                shared=True,
                parts=self.parts,
            )


def render_job_progress(
    job, items, log_lines, log_cap, *, polling=False, shared=False, parts=None
) -> str:
    """The whole progress region, as the page, the polling fragment and the streams show it.
    `shared`: the same bytes for every watcher, so no per-visitor CSRF token in forms (htmx
    sends the page's token as a header). `parts`: the parts as rendered for this version
    already (`_parts`, shared); else they are rendered here, as a polling page's must be
    (its Cancel form says it polls)."""
    if parts is None:
        parts, _ = _parts(job, None, shared=shared, polling=polling)
    return _render(
        "job_progress",
        job=job,
        items=items,
        log_lines=log_lines,
        log_cap=log_cap,
        polling=polling,
        shared=shared,
        part=_placed(parts),
    )


def _placed(parts: dict[str, str]) -> Callable[[str], Markup]:
    """What the regions call to place a part (`part(name)`): its markup, as rendered."""
    return lambda name: Markup(parts[name])


def _oob(markup: str) -> str:
    """A part or region as an out-of-band swap: the attribute that says so, on its root
    element. The markup begins with that element's tag, and the first ">" ends the tag
    (autoescape turns any in its attribute values into "&gt;")."""
    # (as a plain string: Markup.replace would escape the attribute)
    return str(markup).replace(">", ' hx-swap-oob="outerHTML">', 1)


def _render(partial: str, **context) -> str:
    """A partial, straight from the environment: a part renders in microseconds, and the
    context processors and signals of `render_template` would double that (the partials use
    only the environment's globals)."""
    return _render_in(current_app.jinja_env, partial, **context)


def _render_in(env: Environment, partial: str, **context) -> str:
    return env.get_template(f"partials/{partial}.html").render(context).strip()


def fact_keys(job: JobState) -> list[str]:
    """The facts the header shows for `job`, in order (templates/partials/job_fact.html)."""
    keys = ["stage"]
    if not job.finished:
        keys.append("counts")
    if job.failed:
        keys.append("failed")
    if job.current and not job.finished:
        keys.append("current")
    keys.append("started" if job.started_at else "created")
    if job.finished_at:
        keys.append("finished")
    keys.append("elapsed")
    if not job.finished:
        keys += ["rate", "eta"]
    return keys


class _Reading:
    """A job as a part's template sees it, noting each field the template reads."""

    __slots__ = ("_job", "reads")

    def __init__(self, job: JobState):
        self._job = job
        self.reads: dict[str, object] = {}

    def __getattr__(self, name: str):
        value = self.reads[name] = getattr(self._job, name)
        return value

    def inputs(self) -> Inputs:
        """What the part read: a getter of those fields (C's `attrgetter`, which takes them
        all in one call) and the values they had."""
        return _getter(tuple(self.reads)), tuple(self.reads.values())


# A part's inputs: what gets the fields it read from a job, and what they held when it was
# rendered. It is rendered again only if the getter finds other values.
Inputs = tuple[Callable[[JobState], tuple], tuple]


@functools.cache
def _getter(names: tuple[str, ...]) -> Callable[[JobState], tuple]:
    if len(names) > 1:
        return operator.attrgetter(*names)  # a tuple of their values
    return lambda job: tuple(getattr(job, name) for name in names)  # () or one value


def _parts(
    job: JobState, old: JobView | None, shared: bool = True, polling: bool = False
) -> tuple[dict[str, str], dict[str, Inputs]]:
    """Every part of the page that is not an item or a log line, and the fields each read.
    A part whose fields all hold what they held in `old` is not rendered again: most parts
    read a few fields, and most changes move a few. The whole region places the same
    markup (`part(name)` in the templates); a change sends it as an out-of-band swap."""
    parts: dict[str, str] = {}
    reads: dict[str, Inputs] = {}
    fact = None
    for name in (*PARTS, *(f"fact:{key}" for key in fact_keys(job))):
        before = old.reads.get(name) if old is not None else None
        if before is not None and before[0](job) == before[1]:
            parts[name], reads[name] = old.parts[name], before
            continue
        reading = _Reading(job)
        if name in PARTS:
            parts[name] = _render(name, job=reading, shared=shared, polling=polling)
        else:
            if fact is None:
                fact = current_app.jinja_env.get_template("partials/job_fact.html").module.fact
            parts[name] = str(fact(reading, name.removeprefix("fact:"))).strip()
        reads[name] = reading.inputs()
    return parts, reads


def _changed_parts(old: dict[str, str], new: dict[str, str], job: JobState) -> list[str]:
    """The parts of `new` that differ from `old`; the facts whole when facts came or went."""
    changed = [name for name, html in new.items() if html != old.get(name)]
    if [name for name in new if name.startswith("fact:")] == [
        name for name in old if name.startswith("fact:")
    ]:
        return [_oob(new[name]) for name in changed]
    return [_oob(new[name]) for name in changed if name in PARTS] + [
        _oob(_render("job_facts", job=job, part=_placed(new)))
    ]


def _change_since(view: JobView, steps: tuple[Earlier, ...]) -> str:
    """The out-of-band swaps that turn the page at the oldest of `steps` (newest first, the
    versions read since) into `view`: the parts whose markup differs, the items changed in
    any of those versions, and the log lines added since."""
    since = steps[-1]
    parts = _changed_parts(since.parts, view.parts, view.state)
    changed_items = [step.items_after for step in steps]
    if None in changed_items:
        parts.append(_oob(_render("job_items", items=_ordered(view.items))))
    else:
        indices = sorted(frozenset().union(*changed_items))
        item_bar = current_app.jinja_env.globals["item_bar"]
        parts += [_oob(item_bar(view.items[i])) for i in indices]
    added = view.state.log_total - since.log_total
    if added > 0:
        if not since.log_total or added >= min(view.log_cap, len(view.log_lines) + 1):
            parts.append(_oob(_render("job_log", log_lines=view.log_lines, log_cap=view.log_cap)))
        else:
            log_line = current_app.jinja_env.globals["log_line"]
            lines = "".join(log_line(line) for line in reversed(view.log_lines[-added:]))
            parts.append(f'<ol hx-swap-oob="afterbegin:#job-log">{lines}</ol>')
    return "".join(parts)


def _ordered(items: dict[int, ItemProgress]) -> list[ItemProgress]:
    return [items[index] for index in sorted(items)]


class JobViews:
    """The process's views by job id, refreshed no more than once per change: from the
    change notices the hub hands in (`notice`), or else by reading."""

    def __init__(self, store: JobStore, max_entries: int = 4096):
        self.store = store
        self.max_entries = max_entries
        self._views: dict[str, JobView] = {}
        self._lock = threading.Lock()  # one refresh at a time; waiters reuse its result
        # The notices of each held view's job not applied yet, with when each came.
        self._notices: dict[str, list[tuple[float, Notice]]] = {}
        self._notices_lock = threading.Lock()  # (never held across a read: the hub takes it)

    def get(
        self, job_ids: Iterable[str], not_before: float | Mapping[str, float], context
    ) -> dict[str, JobView]:
        """The views of `job_ids` that hold every change notified before `not_before`
        (monotonic; one moment for all, or one for each job); jobs that are gone are left
        out. Stale ones catch up from their notices, or are read together, in one round
        trip."""
        job_ids = list(job_ids)
        views = self._fresh(job_ids, not_before)
        if len(views) < len(job_ids):
            with self._lock:
                views = self._fresh(job_ids, not_before)
                stale = [job_id for job_id in job_ids if job_id not in views]
                if stale:
                    views.update(self._refresh(stale, not_before, context))
        return views

    def notice(self, notice: Notice, at: float) -> None:
        """Keep a job's change notice, heard at `at` (the hub hands each in before it tells
        anyone of it), if this process holds a view of the job: the next `get` applies it
        rather than reading. A view nobody asks for keeps a few; then it is read again."""
        if notice.job_id in self._views:
            with self._notices_lock:
                kept = self._notices.setdefault(notice.job_id, [])
                if len(kept) >= TRAIL:
                    kept.clear()
                kept.append((at, notice))

    def forget(self, job_id: str) -> None:
        """Drop what this process holds of a job (removed here: its change notice may still
        be on its way)."""
        with self._lock:
            self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        self._views.pop(job_id, None)
        with self._notices_lock:
            self._notices.pop(job_id, None)

    def _fresh(
        self, job_ids: list[str], not_before: float | Mapping[str, float]
    ) -> dict[str, JobView]:
        views = {}
        for job_id in job_ids:
            view = self._views.get(job_id)
            if view is not None and view.read_at >= _moment(not_before, job_id):
                views[job_id] = view
        return views

    def _caught_up(
        self, view: JobView, not_before: float
    ) -> tuple[float, Changes] | JobView | None:
        """What the notices of `view`'s job, heard since it was read, bring: the change
        since and when the last came (or `view` itself, with nothing new). None if they do
        not hold every change notified before `not_before`: one carried no change, one is
        missing, or none came since that moment (only a read can tell)."""
        with self._notices_lock:
            notices = self._notices.pop(view.state.id, [])
        if not notices or notices[-1][0] < not_before:
            return None
        change, version = None, view.version
        for _, notice in notices:
            if notice.version is None or notice.version > version + 1:
                return None
            if notice.version == version + 1:
                try:
                    before = view if change is None else change
                    applied = notice.apply(before.state, before.record)
                except (ValueError, TypeError, KeyError) as exc:  # not the update script's
                    log.warning(
                        "job %s: a notice that does not apply (%r); read", view.state.id, exc
                    )
                    return None
                change, version = applied if change is None else change.then(applied), version + 1
        if change is None:  # the view was read after all of them: it holds them
            view.read_at = max(view.read_at, notices[-1][0])
            return view
        return notices[-1][0], change

    def _refresh(
        self, job_ids: list[str], not_before: float | Mapping[str, float], context
    ) -> dict[str, JobView]:
        from headway.web import reap_if_stale

        held = {job_id: self._views.get(job_id) for job_id in job_ids}
        fresh: dict[str, JobView] = {}
        changes: dict[str, tuple[float, Changes | None]] = {}  # and when they held
        for job_id, view in held.items():
            caught_up = None if view is None else self._caught_up(view, _moment(not_before, job_id))
            if isinstance(caught_up, JobView):
                fresh[job_id] = caught_up
            elif caught_up is not None:
                changes[job_id] = caught_up
        unread = {j: _seen(v) for j, v in held.items() if j not in fresh and j not in changes}
        if unread:
            read_at = time.monotonic()
            changes |= {j: (read_at, c) for j, c in self.store.read_since(unread).items()}
        with context():
            for job_id, (read_at, change) in changes.items():
                if change is not None and reap_if_stale(change.state) is not change.state:
                    # Just marked interrupted: read its last words too.
                    change = self.store.read_since({job_id: _seen(held[job_id])})[job_id]
                if change is None:
                    self._drop(job_id)
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
            self._drop(next(iter(self._views)))
        return fresh


def _moment(not_before: float | Mapping[str, float], job_id: str) -> float:
    return not_before if isinstance(not_before, float | int) else not_before[job_id]


def _seen(view: JobView | None) -> tuple[int, int] | None:
    return None if view is None else (view.version, view.state.log_total)


def _next_view(old: JobView | None, change: Changes, read_at: float, cap: int) -> JobView:
    """The view after `change`, with what the page showed at `old` and the versions before
    it: the changes from those are made when a stream first asks for one."""
    state = change.state
    items = dict(old.items) if old else {}
    new_items = old is None or any(item.index not in items for item in change.items)
    for item in change.items:
        items[item.index] = item
    log_lines = ((old.log_lines if old else []) + change.log_lines)[-cap:]
    rendered, reads = _parts(state, old)
    if old is None:
        return JobView(read_at, state, change.record, items, log_lines, cap, rendered, reads)
    step = Earlier(
        old.version,
        old.parts,
        old.state.log_total,
        None if new_items else frozenset(item.index for item in change.items),
    )
    earlier = (step, *old.earlier[: TRAIL - 1])
    return JobView(read_at, state, change.record, items, log_lines, cap, rendered, reads, earlier)
