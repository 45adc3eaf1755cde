"""The progress reporter that job code talks to.

Job code calls it as often as it likes; the reporter keeps the state in memory and writes
it at most once per `interval` (default 0.1 s), each write with only the fields that changed
since the last one the job accepted. Stage changes, warning and error log lines and
the final state go out at once. A background thread flushes pending changes and keeps the
heartbeat while the job runs, so a job stuck inside one long item still looks alive and
its last report still reaches the page.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence

import redis

from headway.store import ItemProgress, JobStore, Problem, format_log_line

log = logging.getLogger("headway.reporter")

RATE_WINDOW = 10.0  # seconds of history behind rate and ETA
# No ETA before this much evidence: a guess from the first second misleads more than none.
ETA_MIN_SECONDS = 3.0
ETA_MIN_PERCENT = 3.0
ETA_SMOOTHING = 0.25  # weight of a fresh estimate against the previous one, counted down
MAX_PROBLEMS = 100  # failed items named in the record (the count has them all)
# Sent with every write, changed or not: the heartbeat, and the attempt, by which the update
# script turns away the writes of an attempt that a later one superseded. Any other field
# goes only when it differs from what the last accepted write stored.
ALWAYS_SENT = frozenset({"heartbeat", "attempt"})


class JobCancelled(Exception):
    """Raised at the next report after someone cancelled the job (or it was removed)."""


class ProgressReporter:
    """Stages with weights, done/total counts, per-item bars, log lines, cancellation."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        stages: Sequence[tuple[str, float]] = (("Working", 1.0),),
        *,
        attempt: int = 1,
        floor: float = 0.0,
        interval: float | None = None,
        heartbeat_interval: float | None = None,
        rate_unit: str = "items",
        max_items: int | None = None,
    ):
        self.store = store
        self.job_id = job_id
        self.stages = [(name, float(weight)) for name, weight in stages] or [("Working", 1.0)]
        self._weights = sum(w for _, w in self.stages) or 1.0
        self.attempt = attempt
        self.interval = store.settings.report_interval if interval is None else interval
        self.heartbeat_interval = (
            store.settings.heartbeat_interval if heartbeat_interval is None else heartbeat_interval
        )
        self.max_items = store.settings.max_items if max_items is None else max_items
        self.rate_unit = rate_unit
        self._floor = floor  # a retried run never shows less than the last attempt did

        self.stage_index = 0
        self.done = 0
        self.total = 0
        self.failed = 0
        self.current = ""
        self.message = ""
        self._fields: dict = {}
        self._written: dict = {}  # the fields as the last accepted write stored them
        self._log: list[str] = []
        self._items: dict[int, ItemProgress] = {}
        self._dirty = True
        self._cancelled = False
        self._last_write = 0.0
        self._progress_samples: collections.deque = collections.deque(maxlen=64)
        self._done_samples: collections.deque = collections.deque(maxlen=64)
        self._eta = CalmEta()
        self._problems: dict[int, Problem] = {}

        self._lock = threading.Lock()  # guards the in-memory state
        self._write_lock = threading.Lock()  # keeps writes in order
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable_since: float | None = None

    # -- what job code calls --------------------------------------------------------
    def stage(self, name: str, *, total: int | None = None, message: str | None = None) -> None:
        """Enter a declared stage (by name); counts restart for it. Written at once."""
        names = [n for n, _ in self.stages]
        if name not in names:
            raise ValueError(f"unknown stage {name!r}; declared: {', '.join(names)}")
        with self._lock:
            self.stage_index = max(self.stage_index, names.index(name))
            self.done = 0
            self.total = total or 0
            self.current = ""
            self.message = message if message is not None else name
            self._done_samples.clear()
            self._dirty = True
        self.flush()

    def set(
        self,
        *,
        done: int | None = None,
        total: int | None = None,
        failed: int | None = None,
        current: str | None = None,
        message: str | None = None,
    ) -> None:
        """Set any of the counts and texts; written within `interval`."""
        with self._lock:
            if done is not None:
                self.done = done
            if total is not None:
                self.total = total
            if failed is not None:
                self.failed = failed
            if current is not None:
                self.current = current
            if message is not None:
                self.message = message
            self._dirty = True
        self._tick()

    def advance(self, n: int = 1, *, failed: int = 0, current: str | None = None) -> None:
        """Count `n` more units done (and `failed` more items failed)."""
        with self._lock:
            self.done += n
            self.failed += failed
            if current is not None:
                self.current = current
            self._dirty = True
        self._tick()

    def item(
        self, index: int, name: str, percent: float, status: str = "running", reason: str = ""
    ) -> None:
        """Set the bar of item `index` (0-based); the first `max_items` items get a bar.

        A failed item (with its `reason`, which a person should be able to act on) is also
        named in the job's Problems list; an item that later succeeds leaves it again.
        """
        reason = reason[:300]
        with self._lock:
            if status == "failed" and index not in self._problems:
                if len(self._problems) < MAX_PROBLEMS:
                    self._problems[index] = Problem(index, name[:300], reason)
                    self._fields["problems"] = self._problem_list()
            elif status != "failed" and self._problems.pop(index, None) is not None:
                self._fields["problems"] = self._problem_list()
            if index < self.max_items:
                percent = max(0.0, min(100.0, percent))
                self._items[index] = ItemProgress(name, percent, status, index, reason)
            self._dirty = True
        self._tick()

    def _problem_list(self) -> list[list]:
        return [[p.index, p.name, p.reason] for _, p in sorted(self._problems.items())]

    def log(self, message: str, level: str = "info") -> None:
        """Add a line to the job's recent log; warnings and errors are written at once."""
        with self._lock:
            self._log.append(format_log_line(message, level))
            del self._log[: -self.store.settings.log_lines]  # only these would be kept
            self._dirty = True
        if level in ("warning", "error"):
            self.flush()
        else:
            self._tick()

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled; cheap enough to call per item."""
        if self._cancelled:
            raise JobCancelled(self.job_id)

    @property
    def progress(self) -> float:
        """Overall percent, derived from the stage weights and the fraction of this stage."""
        before = sum(w for _, w in self.stages[: self.stage_index])
        weight = self.stages[self.stage_index][1]
        fraction = min(self.done / self.total, 1.0) if self.total else 0.0
        return max(self._floor, min(100.0, 100.0 * (before + weight * fraction) / self._weights))

    # -- writing ------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._cancelled:
            raise JobCancelled(self.job_id)
        if time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def _snapshot(self, now: float, mono: float) -> tuple[dict, list[str], dict]:
        progress = self.progress
        self._floor = progress  # a later count (a larger total, say) never shows less
        self._progress_samples.append((mono, progress))
        self._done_samples.append((mono, self.done))
        rate = _slope(self._done_samples, mono)
        speed = _slope(self._progress_samples, mono)
        eta = self._eta.update(mono, progress, speed)
        fields = {
            "progress": progress,
            "stage": self.stages[self.stage_index][0],
            "stage_index": self.stage_index,
            "done": self.done,
            "total": self.total,
            "failed": self.failed,
            "current": self.current[:300],
            "message": self.message[:300],
            "rate": max(rate, 0.0),
            "rate_unit": self.rate_unit,
            "eta": "" if eta is None else round(eta, 1),
            "heartbeat": now,
            "attempt": self.attempt,
        }
        fields.update(self._fields)
        written = self._written
        fields = {
            name: value
            for name, value in fields.items()
            if name in ALWAYS_SENT or name not in written or written[name] != value
        }
        logs, items = self._log, self._items
        self._fields, self._log, self._items = {}, [], {}
        self._dirty = False
        return fields, logs, items

    def flush(self, **extra) -> None:
        """Write the current state now (plus `extra` fields). Raises JobCancelled if due."""
        with self._write_lock:
            mono = time.monotonic()
            with self._lock:
                self._fields.update(extra)
                fields, logs, items = self._snapshot(time.time(), mono)
            self._last_write = mono
            try:
                result = self.store.update(self.job_id, fields, log_lines=logs, items=items)
            except redis.RedisError as exc:
                self._keep_for_later(fields, logs, items, exc)
                return
            if self._unreachable_since is not None:
                log.info("job %s: redis reachable again", self.job_id)
                self._unreachable_since = None
            if result.ok:
                self._written.update(fields)
                self._cancelled = self._cancelled or result.cancel_requested
            elif result.reason in ("final", "missing", "stale"):
                # cancelled, reaped or superseded while we worked: stop at the next report
                self._cancelled = True
        self.check()

    def flush_final(self, patience: float = 600.0, **extra) -> None:
        """Write now, and if Redis is unreachable keep trying: a result must not be lost."""
        self.flush(**extra)
        deadline = time.monotonic() + patience
        delay = 0.2
        while self._unreachable_since is not None:
            if time.monotonic() > deadline:
                raise redis.ConnectionError(f"job {self.job_id}: redis unreachable for too long")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            self.flush()

    def _keep_for_later(self, fields, logs, items, exc) -> None:
        """Redis is unreachable: keep what was not written, carry on working."""
        with self._lock:
            self._fields = {**fields, **self._fields}
            for key in (
                "progress",
                "done",
                "total",
                "failed",
                "current",
                "message",
                "stage",
                "stage_index",
                "rate",
                "eta",
                "heartbeat",
            ):
                self._fields.pop(key, None)  # recomputed fresh at the next write
            self._log = (logs + self._log)[-self.store.settings.log_lines :]
            self._items = {**items, **self._items}
            self._dirty = True
        if self._unreachable_since is None:
            self._unreachable_since = time.monotonic()
            log.warning("job %s: redis unreachable (%s); progress kept in memory", self.job_id, exc)

    # -- heartbeat --------------------------------------------------------------------------
    def start(self) -> ProgressReporter:
        self._thread = threading.Thread(
            target=self._beat, name=f"heartbeat-{self.job_id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ProgressReporter:
        self.flush()
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            mono = time.monotonic()
            if self._dirty or mono - self._last_write >= self.heartbeat_interval:
                try:
                    self.flush()
                except JobCancelled:
                    pass  # the work thread sees the flag at its next report
                except Exception:  # never let the heartbeat die silently
                    log.exception("job %s: heartbeat write failed", self.job_id)


class CalmEta:
    """An ETA a person can trust: none until there is evidence (`min_seconds` of work and
    `min_percent` of progress since the first report), then the raw estimate smoothed
    against the previous one counted down, and never above the previous one while the job
    advances (it may rise only while the job stands still). Rounding for people is the
    page's (headway/web/format.py), so that the JSON keeps seconds."""

    def __init__(
        self,
        min_seconds: float = ETA_MIN_SECONDS,
        min_percent: float = ETA_MIN_PERCENT,
        smoothing: float = ETA_SMOOTHING,
    ):
        self.min_seconds, self.min_percent, self.smoothing = min_seconds, min_percent, smoothing
        self._start: tuple[float, float] | None = None
        self._last: tuple[float, float, float] | None = None  # (time, progress, eta)

    def update(self, now: float, progress: float, speed: float) -> float | None:
        """The ETA in seconds at monotonic time `now`, or None while unknown."""
        if self._start is None:
            self._start = (now, progress)
        started_at, started_with = self._start
        if (
            now - started_at < self.min_seconds
            or progress - started_with < self.min_percent
            or speed <= 0
            or progress >= 100.0
        ):
            if self._last is not None and speed <= 0:
                self._last = None  # stalled: the old estimate means nothing now
            return None
        raw = (100.0 - progress) / speed
        if self._last is None:
            eta = raw
        else:
            at, was_progress, was_eta = self._last
            counted = max(0.0, was_eta - (now - at))
            eta = counted + self.smoothing * (raw - counted)
            if progress > was_progress:
                eta = min(eta, was_eta)
        self._last = (now, progress, eta)
        return eta


def _slope(samples: collections.deque, now: float) -> float:
    """Change per second across the recent window of (time, value) samples."""
    while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
        samples.popleft()
    if len(samples) < 2:
        return 0.0
    (t0, v0), (t1, v1) = samples[0], samples[-1]
    return (v1 - v0) / (t1 - t0) if t1 > t0 else 0.0
