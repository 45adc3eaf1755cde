"""One Redis pub/sub subscription per web process, shared by all of its streams.

The listener thread (a greenlet under gevent) receives each change's notice ("<job id>
<owner>", and most often the change itself: `Notice`) on the changes channel, hands it to
the process's views (which apply it when next asked, rather than read), and the job id to
every Watcher that watches that job or that owner. A Watcher is a bounded, collapsing
queue: it holds the set of changed ids (up to a cap, past which it asks for a full re-read)
and wakes its stream; a burst of changes becomes one wake-up, and the stream gets the
newest view, so the newest state is all that is ever sent.

After a lost connection the hub resubscribes by itself and wakes every watcher, because
messages published during the outage are gone: re-reading the records catches up.

A watcher may carry a sink (headway/web/fanout.py): then a change to one of its jobs goes
to the process's fan-out first, which writes it straight to the stream's socket while the
stream waits, and wakes the stream only when it cannot.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import redis

from headway.store import CHANNEL, Notice

log = logging.getLogger("headway.hub")

PING_SECONDS = 10.0  # how long the subscription may be quiet before it is checked
MAX_PENDING = 256  # ids a watcher remembers before it falls back to "re-read everything"
NOTICES_KEPT = 100_000  # jobs whose last change notice the hub remembers (see `fresh_after`)


class HubUnavailable(Exception):
    """The shared subscription is not established (Redis unreachable)."""


class Watcher:
    """What one stream waits on: which of its jobs changed since it last looked."""

    def __init__(self, job_ids: Iterable[str] = (), owner: str | None = None, sink=None):
        self.job_ids = frozenset(job_ids)
        self.owner = owner
        self.sink = sink
        self.parked = False  # in wait(): nothing else is writing to the stream now
        self._pending: set[str] = set()
        self._everything = False
        self._nudged = False
        self._lock = threading.Lock()
        self._event = threading.Event()
        # When this watcher was last told of a change (or registered): a read that begins
        # later sees every change it was told about.
        self.changed_at = time.monotonic()

    def notify(self, job_id: str | None, at: float | None = None) -> None:
        """Tell it a job changed (None: any may have), noticed at `at` (monotonic; now if
        not given): a view that holds every change noticed until then serves it."""
        with self._lock:
            self.changed_at = max(self.changed_at, time.monotonic() if at is None else at)
            if job_id is None or len(self._pending) >= MAX_PENDING:
                self._everything = True
                self._pending.clear()
            elif not self._everything:
                self._pending.add(job_id)
        self._event.set()

    def nudge(self) -> None:
        """Wake the stream with nothing changed: `wait` returns None, as on its timeout."""
        with self._lock:
            self._nudged = True
        self._event.set()

    def wait(self, timeout: float) -> tuple[set[str], bool] | None:
        """Block until something changed: (changed ids, everything?); None on timeout, or
        when nudged with nothing changed."""
        self.parked = True
        try:
            if not self._event.wait(timeout):
                return None
        finally:
            self.parked = False
        with self._lock:
            self._event.clear()
            pending, everything = self._pending, self._everything
            self._pending, self._everything = set(), False
            nudged, self._nudged = self._nudged, False
        if nudged and not pending and not everything:
            return None
        return pending, everything


class ChangeHub:
    """The process's single subscriber and the registry of its watchers."""

    def __init__(self, client: redis.Redis, channel: str = CHANNEL):
        self.client = client
        self.channel = channel
        self._by_job: dict[str, set[Watcher]] = {}
        self._by_owner: dict[str, set[Watcher]] = {}
        # The watchers of a job whose sinks take it (a job's own streams, under gevent): its
        # changes go to the fan-out for them without a look at each (there may be 5,000).
        self._fed_by_job: dict[str, set[Watcher]] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub = None
        self.reconnects = 0
        # When each job's last change notice arrived, and when the subscription last began:
        # a read that began after both holds every change (see `fresh_after`).
        self._noticed: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._forgotten = 0.0  # the newest notice time dropped from `_noticed`
        self._subscribed_at = math.inf
        # Set by the web process: given each change notice and when it came, before anyone
        # is told of it (headway/web/views.py); and each change's job id, the watchers whose
        # sinks take it and when it came (headway/web/fanout.py).
        self.views: Callable[[Notice, float], None] | None = None
        self.fanout: Callable[[str, list[Watcher], float], None] | None = None

    @property
    def watcher_count(self) -> int:
        with self._lock:
            return len({w for ws in self._indexed() for w in ws})

    def start(self) -> None:
        if self._ready.is_set():  # subscribed: the listener runs (every poll asks this)
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="change-hub", daemon=True)
                self._thread.start()

    def ensure_ready(self, timeout: float = 5.0) -> None:
        """Start the listener if needed; raise HubUnavailable unless it is subscribed."""
        self.start()
        if not self._ready.wait(timeout):
            raise HubUnavailable("not subscribed to job changes (is Redis reachable?)")

    @contextlib.contextmanager
    def watch(
        self,
        job_ids: Iterable[str] = (),
        owner: str | None = None,
        timeout: float = 5.0,
        sink=None,
    ) -> Iterator[Watcher]:
        """Register a watcher once the subscription is live (subscribe, then read)."""
        self.ensure_ready(timeout)
        watcher = Watcher(job_ids, owner, sink)
        with self._lock:
            for job_id in watcher.job_ids:
                fed = sink is not None and self.fanout is not None and sink.takes(job_id)
                (self._fed_by_job if fed else self._by_job).setdefault(job_id, set()).add(watcher)
            if owner:
                self._by_owner.setdefault(owner, set()).add(watcher)
            with watcher._lock:  # changes from now on reach it by notify()
                watcher.changed_at = time.monotonic()
        try:
            yield watcher
        finally:
            with self._lock:
                for job_id in watcher.job_ids:
                    _discard(self._by_job, job_id, watcher)
                    _discard(self._fed_by_job, job_id, watcher)
                if owner:
                    _discard(self._by_owner, owner, watcher)

    def fresh_after(self, job_id: str) -> float:
        """The moment after which a read of the job holds its every change: its last notice,
        or the start of the subscription (inf while there is none: nothing can be trusted).

        What a process read since then it may serve again, without reading, until the
        next notice: polling costs no Redis round trip while the job does not change.
        """
        if not self._ready.is_set():
            return math.inf
        with self._lock:
            noticed = self._noticed.get(job_id, self._forgotten)
        return max(noticed, self._subscribed_at)

    def _dispatch(self, data: str) -> None:
        notice = Notice.parse(data)
        job_id, at = notice.job_id, time.monotonic()
        with self._lock:
            self._noticed[job_id] = at
            self._noticed.move_to_end(job_id)
            if len(self._noticed) > NOTICES_KEPT:
                self._forgotten = self._noticed.popitem(last=False)[1]
            fed = list(self._fed_by_job.get(job_id, ()))
            targets = self._by_job.get(job_id, set()) | self._by_owner.get(notice.owner, set())
        if self.views:
            self.views(notice, at)
        if self.fanout:
            taking = [w for w in targets if w.sink is not None and w.sink.takes(job_id)]
            targets.difference_update(taking)
            fed += taking
        for watcher in targets:
            watcher.notify(job_id, at)
        if fed:  # (last: the fan-out may write the change to them all before it returns)
            self.fanout(job_id, fed, at)

    def _wake_all(self) -> None:
        with self._lock:
            targets = {w for ws in self._indexed() for w in ws}
        for watcher in targets:
            watcher.notify(None)

    def _indexed(self) -> Iterator[set[Watcher]]:
        """Every set of watchers the hub holds (with its lock held)."""
        yield from self._by_job.values()
        yield from self._fed_by_job.values()
        yield from self._by_owner.values()

    def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                heard = time.monotonic()
                while True:
                    try:
                        message = _next_message(pubsub)
                    except redis.TimeoutError:
                        # A connection can die without a word (a dropped NAT entry): ask,
                        # and treat silence after asking as a lost connection.
                        if time.monotonic() - heard > 2 * PING_SECONDS:
                            raise redis.ConnectionError("no answer to PING") from None
                        pubsub.ping()
                        continue
                    heard = time.monotonic()
                    if message["type"] == "subscribe":
                        if self.reconnects:
                            log.info("change hub resubscribed after a lost connection")
                        self._subscribed_at = time.monotonic()  # notices may have been lost
                        self._ready.set()
                        self._wake_all()
                        delay = 0.1
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except (redis.RedisError, OSError) as exc:
                if self._ready.is_set():  # the first failure of an outage is worth a warning
                    log.warning("change hub lost redis (%s); reconnecting", exc)
                    self.reconnects += 1
                else:
                    log.debug("change hub still cannot reach redis: %s", exc)
                self._ready.clear()
            except Exception:  # a fault of its own must not end the process's only listener
                log.exception("change hub failed; resubscribing")
                self._ready.clear()
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def _next_message(pubsub: redis.client.PubSub) -> dict:
    """The subscription's next message (redis.TimeoutError after `PING_SECONDS` of silence).

    A read that waits on the socket itself: `PubSub.get_message(timeout)` first polls the
    socket (twice: for data, then whether it closed), and under gevent that cost about as
    much again as the read (135 against 75 us of CPU per notice, notices coming one at a
    time). Over RESP3 a message is a push, which `push_request` returns like any reply.
    """
    response = pubsub.connection.read_response(
        timeout=PING_SECONDS, disconnect_on_error=False, push_request=True
    )
    return pubsub.handle_message(response)


def _discard(index: dict[str, set[Watcher]], key: str, watcher: Watcher) -> None:
    watchers = index.get(key)
    if watchers is not None:
        watchers.discard(watcher)
        if not watchers:
            del index[key]
