"""Fan-out: each change written once per stream, straight to its socket, by one greenlet
at a time: the hub's, as the change's notice comes, or the fan-out's own, when a change was
being written already (it then writes every change noticed meanwhile).

A stream is a greenlet that sends what its browser lacks. Waking a thousand of them for
one change, to have each look up the same message and hand it to the WSGI server, costs
more than the writes themselves. So, under gunicorn's gevent worker, a stream that waits
gives its socket to the process's fan-out (a `Sink`): when a job changes, the fan-out
brings the shared view up to date once (from the change's notice, or by reading) and
renders it once, then writes pre-framed bytes to every waiting stream, one non-blocking
write each: the change since the version the stream has (the version before, for a stream
that keeps up; the whole state, for one at a version the process never read), made and
framed once for each version that streams have. A stream that fell behind thus catches up
for the price of keeping up. The fan-out wakes the stream greenlet only when it must act
itself:

- it is not waiting (it is sending something else): it catches up by itself once done,
  the same way;
- the socket took part of the message (its browser reads slowly): the stream writes the
  rest, and meanwhile later changes go past it; it then skips to the newest state, and
  never holds up the others;
- the change is the job's final state and the stream ends with it, or the stream also
  keeps a job list's rows (those are rendered per owner).

A stream that waits has no timer of its own for its keepalive: the fan-out keeps them all
(`Fanout.keep`) and wakes each stream once its quiet spell is over. Ten thousand timers
were ten thousand objects made anew every keepalive interval, which kept the young
generation of the garbage collector tens of thousands strong and its collections long, and
ten thousand wake-ups that did nothing but set the next timer.

A stream that got its final state is woken to end `END_GRACE` later, once the process is
idle, one at a time. Its client closes on `done` (the state came with it) and so, most
often, first: an ending then costs the client nothing. Ended at once, each stream sent its
client the response's last chunk and the connection's close while the client was still
reading the final states of other jobs; with 10,000 streams over 100 jobs that end within a
second, the load generator fell 50-130 ms behind in some runs, and the final states with
it, while the server had written each within 8 ms. And ending a stream (its greenlet, the
response's close, the connection's next read) costs the server more than writing to it:
ten thousand endings at once would hold up the final states of the jobs that end after.

Direct writes need the plain socket of an HTTP/1.1 response the server frames in chunks;
anywhere else (TLS in the server, HTTP/1.0, another server) streams write through WSGI.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import os
import random
import ssl
import threading
import time

import gevent
import redis
from flask import has_request_context
from gevent import monkey

from headway.hub import Watcher
from headway.web.views import Framing, JobView, JobViews

log = logging.getLogger("headway.fanout")

BATCH = 8  # jobs read together (one round trip) and written before the next are read
# Seconds from a stream's final state to its end (if its client has not closed it by then).
END_GRACE = 1.0
# Streams ended in one go, one at a time, before the fan-out looks at the waiting streams
# again. Each is woken to end once the process is idle (`_idle`), or after `IDLE_WAIT`.
ENDINGS = 10
IDLE_WAIT = 0.05
KEPT = 50  # streams woken for their keepalives at a time, likewise
LOOKED = 100  # waiting streams looked at in one go: the fan-out writes no change meanwhile
# The waiting streams are kept in slots of this many seconds, by when their keepalive falls
# due, and a slot's streams are looked at together once it begins: a look comes a few times
# a second, and wakes each stream at most this long before its keepalive is due. Looking
# only at those due already, the fan-out woke about 500 times a second for one or two
# streams each with 10,000 streams held (a keepalive is 7.5-15 s of quiet, drawn per stream).
LOOK_AHEAD = 0.25


def quiet_spell(keepalive: float) -> float:
    """How long a stream may stay silent before its keepalive: between half the interval and
    all of it, drawn for each stream, so that streams that connected together do not all
    wake together (ten thousand at once held up every change for a tenth of a second)."""
    return keepalive * random.uniform(0.5, 1.0)


class Change:
    """A change being written: its view, and its bytes as framed for each kind of stream and
    each version that streams start from, made once by the first stream that needs them."""

    __slots__ = ("base", "finished", "frames", "job_id", "version", "view")

    def __init__(self, view: JobView):
        self.view = view
        self.job_id = view.state.id
        self.version = view.version
        self.base = view.base
        self.finished = view.state.finished
        self.frames: dict[tuple, bytes] = {}


class Sink:
    """A stream's socket, and the version of each job it has sent (shared with the stream)."""

    def __init__(
        self,
        sock,
        chunked: bool,
        framing: Framing,
        sent: dict[str, int | None],
        context,
        keepalive: float,
    ):
        self.sock = sock
        self.ends = False  # the stream ends with its job's final state
        self.ended = False  # that final state was written here
        self.fd = sock.fileno()
        self.chunked = chunked
        self.framing = framing
        self.sent = sent
        self.context = context
        self.rows = False  # it also keeps rows: every change wakes it
        self.pending = b""  # what the socket has not taken yet: the stream writes it
        self.written_at = -math.inf  # monotonic time of the fan-out's last write here
        self.quiet = quiet_spell(keepalive)  # its keepalive falls due after this much silence
        self.since = time.monotonic()  # when the stream last began to wait
        self.kept = False  # kept by the fan-out among the waiting streams (`Fanout.keep`)

    @classmethod
    def for_request(
        cls, environ, framing: Framing, sent: dict, context, keepalive: float
    ) -> Sink | None:
        """A sink for this response, if the server lets one write to its socket."""
        sock = environ.get("gunicorn.socket")
        # gevent's sockets are non-blocking underneath: a write takes what fits, at once.
        if sock is None or "gevent" not in type(sock).__module__ or _is_tls(sock):
            return None
        chunked = environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
        return cls(sock, chunked, framing, sent, context, keepalive)

    def keepalive_at(self) -> float:
        """When its keepalive falls due (monotonic): a quiet spell after the last write."""
        return max(self.since, self.written_at) + self.quiet

    def takes(self, job_id: str) -> bool:
        return job_id in self.sent and not self.rows

    def write(self, change: Change, sent: int | None, now: float) -> bool:
        """Bring the stream to the change's version: the change since the version it has
        (or the whole state, if the view does not know that version). True once the socket
        took all of it; False when the stream must act itself. Only while the stream waits
        (nothing else writes to it). `sent`: the version it has of the change's job; `now`:
        the moment the change is written (monotonic).

        A stream that ends with the job's final state (`ends`) is then `ended`: it must be
        woken to end. Nothing is written after that state (its `done`): a later version (the
        link to a retry) wakes the stream to end, as if it were not waiting.
        """
        if self.pending or self.ended:
            return False
        base = sent if sent == change.base else change.view.since(sent)
        key = (self.framing, self.chunked, base)
        data = change.frames.get(key)
        if data is None:
            data = change.frames[key] = self._frame(change.view, base)
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            return False  # the socket is full: the stream catches up when it drains
        except OSError:
            return False  # gone: the stream finds out when it next writes, and ends
        self.sent[change.job_id] = change.version
        self.ended = self.ends and change.finished
        self.written_at = now
        if written < len(data):
            self.pending = data[written:]
            return False
        return True

    def _frame(self, view: JobView, base: int | None) -> bytes:
        message = view.message(self.framing, base, self.context)
        if not self.chunked:
            return message
        return b"%X\r\n%s\r\n" % (len(message), message)  # as the server frames a chunk

    def flush(self) -> None:
        """Write what the socket did not take (the stream's greenlet, waiting as it must)."""
        pending, self.pending = self.pending, b""
        if pending:
            self.sock.sendall(pending)


def _idle() -> None:
    """Wait until the process has nothing else to do, `IDLE_WAIT` at most. Under gevent:
    until its loop has run what was ready, looked at the sockets (the hub's among them) and
    found nothing more to run. `time.sleep(0)` is no such wait: gevent may run a greenlet
    that sleeps 0 again before it looks at the sockets (its docs say so)."""
    if not monkey.is_module_patched("threading"):
        time.sleep(0)
        return
    with gevent.Timeout(IDLE_WAIT, False):
        gevent.idle()


def _is_tls(sock) -> bool:
    if isinstance(sock, ssl.SSLSocket):
        return True
    try:
        from gevent.ssl import SSLSocket
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return isinstance(sock, SSLSocket)


class Fanout:
    """The process's fan-out: changes in, direct writes out. Its own greenlet writes the
    changes that came while one was being written, ends the streams that got their final
    state and wakes those whose keepalive fell due.

    `times` holds, for each of the latest changes it wrote, the seconds from the change's
    notice to its last write (`/healthz` reports them).
    """

    def __init__(self, views: JobViews, timed: int = 1000):
        self.views = views
        self.times: collections.deque[float] = collections.deque(maxlen=timed)
        self._pending: dict[str, list[Watcher]] = {}
        self._noticed: dict[str, float] = {}  # of each pending job: its first notice
        self._latest: dict[str, float] = {}  # and its latest
        # The streams that got their final state, with when each is to end (monotonic).
        self._ending: collections.deque[tuple[float, Watcher, str]] = collections.deque()
        # The waiting streams it keeps, by the slot (`LOOK_AHEAD` seconds of the monotonic
        # clock) in which to look at each next, first come first served; a stream that woke
        # meanwhile is dropped when its turn comes, and kept again when it next waits. A
        # stream written to since is put in a later slot: one append, where a heap of
        # 10,000 streams took 5 µs a stream and a look 1 ms, in which no change was written.
        self._kept: dict[int, collections.deque[Watcher]] = {}
        self._slots: list[int] = []  # the slots in `_kept`, a heap
        self._lock = threading.Lock()
        self._turn = threading.Lock()  # held while changes are written, by whoever writes
        self._event = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, job_id: str, watchers: list[Watcher], at: float) -> None:
        """Take a change of `job_id` for `watchers`, noticed at `at` (from the hub, as the
        notice arrives), and write it here and now, unless the fan-out is at work: then
        it does, once done with what it is at (with every change noticed meanwhile)."""
        with self._lock:
            self._pending.setdefault(job_id, []).extend(watchers)
            self._noticed.setdefault(job_id, at)
            self._latest[job_id] = at
            self._start()
        if self._turn.acquire(blocking=False):
            try:
                self._send_pending()
            finally:
                self._turn.release()
            return
        self._event.set()  # the fan-out writes what waits, once done with what it is at

    def keep(self, watcher: Watcher) -> None:
        """Look after a stream that is about to wait (`watcher.sink` set): wake it once its
        keepalive falls due (`Watcher.nudge`)."""
        if watcher.sink.kept:  # still kept from an earlier wait: it is looked at then
            return
        watcher.sink.kept = True
        with self._lock:
            earliest = self._keep_at(watcher, watcher.sink.keepalive_at())
            self._start()
        if earliest:
            self._event.set()

    def _keep_at(self, watcher: Watcher, at: float) -> bool:
        """Keep a stream in the slot of `at` (with the lock held); True if that slot is new
        and the earliest: the fan-out's wait must end sooner."""
        slot = math.floor(at / LOOK_AHEAD)
        streams = self._kept.get(slot)
        if streams is not None:
            streams.append(watcher)
            return False
        self._kept[slot] = collections.deque((watcher,))
        heapq.heappush(self._slots, slot)
        return self._slots[0] == slot

    def _start(self) -> None:
        """Start the fan-out greenlet, if it has not started (with the lock held)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fanout", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            self._event.wait(self._until_next_task())
            self._event.clear()
            with self._turn:
                if self._send_pending():
                    continue
            try:
                self._look_after()
            except Exception:
                log.exception("fan-out could not look after the waiting streams")
            self._end_some()

    def _send_pending(self) -> bool:
        """Write the changes noticed so far (with `_turn` held); False if there were none.

        The thread that writes (the fan-out's, or the hub's as a notice comes) keeps a
        stream's request context entered for all it ever renders: what the fan-out renders
        is the same for every watcher, and entering and leaving one for each change took
        0.1 ms of the 0.8-0.9 from a notice to the change's first write, here.
        """
        with self._lock:
            pending, self._pending = self._pending, {}
            noticed, self._noticed = self._noticed, {}
            latest, self._latest = self._latest, {}
        if not pending:
            return False
        try:
            if not has_request_context():
                next(iter(pending.values()))[0].sink.context().push()  # never left
            self._send(pending, noticed, latest)
        except Exception as exc:
            if isinstance(exc, redis.RedisError):  # the streams say so, each as it ends
                log.debug("fan-out could not read: %s", exc)
            else:
                log.exception("fan-out failed; the streams catch up by themselves")
            for job_id, watchers in pending.items():
                for watcher in watchers:
                    watcher.notify(job_id)
        return True

    def _send(
        self,
        pending: dict[str, list[Watcher]],
        noticed: dict[str, float],
        latest: dict[str, float],
    ) -> None:
        # The changes noticed so far, a few jobs at a time: each few brought up to date
        # together (from their notices, or read in one round trip) and rendered once, then
        # written, so the first jobs of a burst wait for no others. A view holds a change
        # once it holds every one noticed until the job's latest notice.
        # In one context (a stream's: what is rendered here is the same for every watcher):
        # the one the writing thread holds (`_send_pending`), else one for this turn.
        context = next(iter(pending.values()))[0].sink.context
        job_ids = list(pending)
        with context():
            for first in range(0, len(job_ids), BATCH):
                batch = job_ids[first : first + BATCH]
                views = self.views.get(batch, latest, context)
                for job_id in batch:
                    watchers, at = pending[job_id], (noticed[job_id], latest[job_id])
                    self._write(job_id, views.get(job_id), watchers, *at)

    def _write(
        self,
        job_id: str,
        view: JobView | None,
        watchers: list[Watcher],
        noticed: float,
        latest: float,
    ) -> None:
        written, change, now = 0, None if view is None else Change(view), time.monotonic()
        for watcher in watchers:
            sink = watcher.sink
            if change is None or not watcher.parked:
                watcher.notify(job_id, latest)
                continue
            sent = sink.sent.get(job_id)
            if sent == change.version:
                continue  # it has this version (noticed twice before the read)
            if sink.write(change, sent, now):
                written += 1
                if sink.ended:  # its last message: the stream ends, once there is time
                    if not self._ending:  # the fan-out's wait must now end by its end
                        self._event.set()
                    self._ending.append((now + END_GRACE, watcher, job_id))
            else:
                watcher.notify(job_id, latest)
        if written:
            self.times.append(time.monotonic() - noticed)

    def _until_next_task(self) -> float | None:
        """Seconds until a kept stream must be looked at or a stream ended (None: no
        stream is kept or ending)."""
        with self._lock:
            due = [self._slots[0] * LOOK_AHEAD] if self._slots else []
        if self._ending:
            due.append(self._ending[0][0])
        return max(0.0, min(due) - time.monotonic()) if due else None

    def _look_after(self) -> None:
        """Look at a few of the kept streams whose slot has begun: wake those whose
        keepalive is due before the slot ends (`LOOK_AHEAD` from now at most), and keep
        those written to since for the slot of a quiet spell after that write. The rest wait
        for the next look, after the changes noticed meanwhile."""
        woken, looked = 0, 0
        now = time.monotonic()
        horizon = now + LOOK_AHEAD
        with self._lock:
            slots, kept = self._slots, self._kept
            while slots and slots[0] * LOOK_AHEAD <= now and woken < KEPT and looked < LOOKED:
                streams = kept[slots[0]]
                if not streams:  # every stream of the slot looked at
                    del kept[heapq.heappop(slots)]
                    continue
                looked += 1
                watcher = streams.popleft()
                sink = watcher.sink
                if not watcher.parked:  # it woke (or ended) since: not ours until it waits
                    sink.kept = False
                elif (at := sink.keepalive_at()) <= horizon:
                    sink.kept = False
                    watcher.nudge()
                    woken += 1
                else:  # (a later slot: `at` is past the end of this one)
                    self._keep_at(watcher, at)
        if woken:
            time.sleep(0)  # under gevent: the woken streams run now, this greenlet after them

    def _end_some(self) -> None:
        """Wake a few of the streams whose end has come, one at a time, each once the
        process is idle: it ends (in its own greenlet) before the next is woken, and the
        changes noticed meanwhile are written first."""
        for _ in range(ENDINGS):
            if not self._ending or self._ending[0][0] > time.monotonic():
                return
            _idle()
            _, watcher, job_id = self._ending.popleft()
            watcher.notify(job_id)

    def timing(self) -> dict:
        """The latest changes' fan-out times: how many, and their p50, p99 and max in ms."""
        times = sorted(self.times)
        if not times:
            return {"changes": 0}

        def ms(q: float) -> float:
            return round(1000 * times[min(len(times) - 1, int(q * len(times)))], 2)

        return {"changes": len(times), "p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": ms(1)}
