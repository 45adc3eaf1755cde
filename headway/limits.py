"""Limits on what one visitor, one client address and one process may hold or start.

Per owner (the cookie) and per client address (which a new cookie does not reset), kept in
Redis so they hold across web processes:
- streams and uploads open at once: a hash per owner or address of the slots each web
  process holds there, counted only while the process lives (`Holder`), so a process that
  dies leaks nothing for long;
- jobs started per minute: a counter per owner or address and minute;
- jobs queued or running: the owner's job index, or a set per address of the jobs it
  started, pruned of finished ones as it is counted.
Per process (`ProcessCaps`): streams and uploads in flight, counted in memory. Globally:
jobs waiting in the queue.

Per-owner and per-address limits answer 429 and can be turned off (`HEADWAY_RATE_LIMITS`);
the process and queue caps protect the server itself, answer 503 and always hold.
"""

from __future__ import annotations

import collections
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable

import redis

from headway.settings import Settings

log = logging.getLogger("headway.limits")

# Slots are counted per web process: each set is a hash of holder (a process's token) ->
# the slots it holds there, and HOLDERS scores each holder by the moment it lapses. A
# process renews its own entry while it holds slots (`Holder`): one command, however many
# slots it holds. The slots of a process that died stop counting once its entry lapses,
# and the next slot taken in their set drops them.
HOLDERS = "hw:holders"

# Take one slot in every set, or in none. KEYS: HOLDERS, then the sets. ARGV: now, holder,
# when the holder lapses, the sets' time to live, then each set's cap. Returns 0, or the
# 1-based index of the first set that is full.
ACQUIRE_SLOTS = """
local now, holder = tonumber(ARGV[1]), ARGV[2]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], ARGV[3], holder)
for i = 2, #KEYS do
  local held, total = redis.call('HGETALL', KEYS[i]), 0
  for j = 1, #held, 2 do
    if redis.call('ZSCORE', KEYS[1], held[j]) then
      total = total + tonumber(held[j + 1])
    else
      redis.call('HDEL', KEYS[i], held[j])  -- a process that died
    end
  end
  if total >= tonumber(ARGV[3 + i]) then return i - 1 end
end
for i = 2, #KEYS do
  redis.call('HINCRBY', KEYS[i], holder, 1)
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 0
"""

# Give slots back. KEYS: the sets. ARGV: holder, then how many slots go back in each set.
RELEASE_SLOTS = """
for i, key in ipairs(KEYS) do
  if redis.call('HINCRBY', key, ARGV[1], -tonumber(ARGV[i + 1])) <= 0 then
    redis.call('HDEL', key, ARGV[1])
  end
end
return 0
"""


class LimitExceeded(Exception):
    """A per-visitor or per-address limit: 429."""

    status = 429

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class ServerBusy(LimitExceeded):
    """A cap that protects the server itself: 503."""

    status = 503


def held(client: redis.Redis, key: str) -> int:
    """The slots held in a set (`hw:streams:<owner>`, say) by processes that live."""
    counts = client.hgetall(key)
    if not counts:
        return 0
    lapses, now = client.zmscore(HOLDERS, list(counts)), time.time()
    return sum(int(n) for n, at in zip(counts.values(), lapses, strict=True) if at and at > now)


class Lease:
    """A slot in each of several sets, held until released (once; later calls do nothing):
    at once (`at_once`, for uploads: a client that sends one after another must not find
    its own last one still counted), or a moment later, with others (streams, which end in
    thousands at once)."""

    def __init__(self, holder: Holder | None, keys: list[str], at_once: bool = False):
        self.holder, self.keys, self.at_once = holder, keys, at_once

    def release(self) -> None:
        holder, self.holder = self.holder, None
        if holder is not None:
            holder.release(self.keys, self.at_once)


class Holder:
    """This process's slots in Redis: taken one at a time, given back together.

    A thread of its own (a greenlet under gevent) renews its entry in HOLDERS while it holds
    any slot, so a slot costs Redis nothing while it is held, and sends the slots given back
    a moment after the first (`GATHER`), together with every other given back meanwhile:
    the caller never waits for Redis.

    With 10,000 streams over 100 jobs that end within a second, in the bench (where the
    clients share a core with Redis): with a lease per stream, renewed while the stream
    lived (about 700 a second) and taken back as the streams ended, in hundreds of round
    trips of ZREM on sets of 10,000 (67 ms of Redis's time), the final states arrived
    54-205 ms late at the p99 in four runs, against 11-30 ms in four runs with no limits.
    Counted per process, but still given back as they queued: 14, 64 and 87 ms in three
    runs; gathered: 17-38 ms in six. (A round trip each had them queue for the pool's few
    connections, and final states arrived 0.5 s late.)

    A slot that cannot be given back (Redis unreachable) goes with its set, which expires a
    minute after the process last held another slot in it, or with the process.
    """

    GATHER = 0.05  # seconds a slot given back waits for others
    LAPSE = 30.0  # seconds after its last renewal that a holder's slots stop counting
    RENEW_EVERY = LAPSE / 3

    def __init__(self, client: redis.Redis):
        self.client = client
        self.token = secrets.token_hex(8)
        self._acquire = client.register_script(ACQUIRE_SLOTS)
        self._release = client.register_script(RELEASE_SLOTS)
        self._held: collections.Counter[str] = collections.Counter()  # slots held, by set
        self._queued: collections.Counter[str] = collections.Counter()  # to give back
        self._given_back = threading.Event()  # (set by `release`)
        self._running = False  # its thread (`_run`), while it holds slots
        self._lock = threading.Lock()

    def take(self, keys: list[str], caps: list[int]) -> int:
        """One slot in each set of `keys`, or in none: 0, or the 1-based index of the first
        set that is at its cap."""
        now = time.time()
        lapses, ttl = now + self.LAPSE, self._set_ttl()
        full = int(self._acquire(keys=[HOLDERS, *keys], args=[now, self.token, lapses, ttl, *caps]))
        if not full:
            with self._lock:
                self._held.update(keys)
                running, self._running = self._running, True
            if not running:
                threading.Thread(target=self._run, name="slot-holder", daemon=True).start()
        return full

    def release(self, keys: list[str], at_once: bool = False) -> None:
        """Give back a slot in each set of `keys`: soon (`GATHER`), or `at_once`.

        It starts no thread: a response that is never closed gives its slots back when the
        garbage collector finalizes it, and a thread started from there can deadlock on
        `threading`'s own lock (seen in the suite). The thread that sends them runs for as
        long as this process holds slots, and a slot given back is one held.
        """
        if not at_once:
            with self._lock:
                self._queued.update(keys)
            self._given_back.set()
            return
        with self._lock:
            self._held -= collections.Counter(keys)  # (a set at zero is dropped)
        try:
            self._release(keys=keys, args=[self.token, *(1 for _ in keys)])
        except redis.RedisError as exc:  # it goes with its set, or with the process
            log.warning("could not give back a slot: %s", exc)

    def _run(self) -> None:
        """While this process holds slots: send those given back, a moment after the first
        (with every other given back meanwhile), and renew its entry every `RENEW_EVERY`."""
        renew_at = time.monotonic() + self.RENEW_EVERY
        try:
            while True:
                if self._given_back.wait(max(0.0, renew_at - time.monotonic())):
                    time.sleep(self.GATHER)
                    self._given_back.clear()  # (those given back from now on wake it again)
                with self._lock:
                    queued, self._queued = self._queued, collections.Counter()
                    self._held -= queued  # (a set at zero is dropped)
                    keys = list(self._held)
                    if not keys and not queued:
                        self._running = False  # with the lock: a slot taken starts another
                        return
                try:
                    if queued:
                        self._release(keys=list(queued), args=[self.token, *queued.values()])
                    if keys and time.monotonic() >= renew_at:
                        renew_at = time.monotonic() + self.RENEW_EVERY
                        self._renew(keys)
                except redis.RedisError as exc:  # retried at the next renewal; given back
                    # slots go with their set, which expires once no slot in it is renewed
                    log.warning("could not renew or give back this process's slots: %s", exc)
        except BaseException:  # (killed): the next slot taken starts another
            with self._lock:
                self._running = False
            raise

    def _set_ttl(self) -> int:
        """A set's time to live, in whole seconds: it outlives its holders' lapse."""
        return math.ceil(2 * self.LAPSE)

    def _renew(self, keys: list[str]) -> None:
        """Renew this holder, and the sets it holds slots in (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(HOLDERS, {self.token: time.time() + self.LAPSE})
        for key in keys:
            pipe.expire(key, self._set_ttl())
        pipe.execute()


class Limits:
    def __init__(self, client: redis.Redis, settings: Settings):
        self.client = client
        self.settings = settings
        self.enabled = settings.rate_limits
        self.holder = Holder(client)

    def _lease(self, sets: list[tuple[str, int, str]], at_once: bool = False) -> Lease:
        """Take a slot in each (key, cap, message) set, or raise with the first full one's."""
        if not self.enabled:
            return Lease(None, [])
        keys = [key for key, _, _ in sets]
        full = self.holder.take(keys, [cap for _, cap, _ in sets])
        if full:
            raise LimitExceeded(
                sets[full - 1][2],
                retry_after=max(1, math.ceil(self.settings.keepalive_seconds)),
            )
        return Lease(self.holder, keys, at_once)

    def open_stream(self, owner: str, address: str) -> Lease:
        """Take a stream slot of the owner and of the address, or raise LimitExceeded."""
        s = self.settings
        return self._lease(
            [
                (
                    f"hw:streams:{owner}",
                    s.max_streams_per_owner,
                    f"Too many live streams open ({s.max_streams_per_owner} at most); "
                    "close some tabs.",
                ),
                (
                    f"hw:streams:addr:{address}",
                    s.max_streams_per_address,
                    f"Too many live streams open from your address "
                    f"({s.max_streams_per_address} at most); close some tabs.",
                ),
            ]
        )

    def open_upload(self, address: str) -> Lease:
        """Take an upload slot of the address, or raise LimitExceeded."""
        cap = self.settings.uploads_per_address
        return self._lease(
            [
                (
                    f"hw:uploads:addr:{address}",
                    cap,
                    f"Too many uploads in progress from your address ({cap} at most); "
                    "wait for one to finish.",
                )
            ],
            at_once=True,
        )

    @staticmethod
    def _rate_key(who: str, now: float) -> str:
        return f"hw:rate:{who}:{int(now // 60)}"

    @staticmethod
    def _address_jobs_key(address: str) -> str:
        return f"hw:jobs:addr:{address}"

    def check_job(
        self,
        owner: str,
        running_now: int,
        address: str | None = None,
        get_many: Callable | None = None,
    ) -> None:
        """Raise LimitExceeded if the owner (or their address) may not start a job now."""
        if not self.enabled:
            return
        s = self.settings
        if running_now >= s.running_jobs_per_owner:
            raise LimitExceeded(
                f"You already have {running_now} jobs queued or running "
                f"({s.running_jobs_per_owner} at most); wait for one to finish.",
                retry_after=10,
            )
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._rate_key(owner, now))
        if address is not None:
            pipe.get(self._rate_key(f"addr:{address}", now))
        started = [int(n or 0) for n in pipe.execute()]
        if started[0] >= s.jobs_per_minute:
            raise LimitExceeded(
                f"Too many jobs started this minute ({s.jobs_per_minute} at most).",
                retry_after=60 - int(now % 60),
            )
        if address is None:
            return
        if started[1] >= s.jobs_per_minute_per_address:
            raise LimitExceeded(
                f"Too many jobs started from your address this minute "
                f"({s.jobs_per_minute_per_address} at most).",
                retry_after=60 - int(now % 60),
            )
        if get_many is not None:
            running = self.address_running(address, get_many)
            if running >= s.running_jobs_per_address:
                raise LimitExceeded(
                    f"Your address already has {running} jobs queued or running "
                    f"({s.running_jobs_per_address} at most); wait for one to finish.",
                    retry_after=10,
                )

    def address_running(self, address: str, get_many: Callable) -> int:
        """Jobs started from the address that have not finished; forgets finished ones."""
        key = self._address_jobs_key(address)
        ids = self.client.zrange(key, 0, -1)
        if not ids:
            return 0
        live = {job.id for job in get_many(ids) if not job.finished}
        if gone := [i for i in ids if i not in live]:
            self.client.zrem(key, *gone)
        return len(live)

    def record_job(self, owner: str, address: str | None = None, job_id: str | None = None):
        """Count a job that was accepted (refused uploads do not count)."""
        if not self.enabled:
            return
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for who in [owner] + ([f"addr:{address}"] if address is not None else []):
            key = self._rate_key(who, now)
            pipe.incr(key)
            pipe.expire(key, 120)
        if address is not None and job_id is not None:
            key = self._address_jobs_key(address)
            pipe.zadd(key, {job_id: now})
            pipe.expire(key, math.ceil(self.settings.retention_seconds))
        pipe.execute()

    def check_queue(self, queued: int) -> None:
        """Raise ServerBusy when the queue holds as many jobs as it may."""
        cap = self.settings.max_queued_jobs
        if queued >= cap:
            raise ServerBusy(
                f"The server has {queued} jobs waiting to start ({cap} at most); "
                "try again in a minute.",
                retry_after=30,
            )


class ProcessCaps:
    """Streams and uploads in flight in this web process, counted in memory."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._held = {"stream": 0, "upload": 0}

    def held(self, what: str) -> int:
        return self._held[what]

    def take(self, what: str) -> Callable[[], None]:
        """Take a slot or raise ServerBusy; returns the slot's release (safe to call twice)."""
        cap = {
            "stream": self.settings.max_streams_per_process,
            "upload": self.settings.max_uploads_per_process,
        }[what]
        with self._lock:
            if self._held[what] >= cap:
                raise ServerBusy(
                    f"This server is at its limit of {cap} {what}s at once; "
                    "try again in a few seconds.",
                    retry_after=5,
                )
            self._held[what] += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self._held[what] -= 1

        return release
