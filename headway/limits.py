"""Limits on what one visitor, one client address and one process may hold or start.

Per owner (the cookie) and per client address (which a new cookie does not reset), kept in
Redis so they hold across web processes:
- streams and uploads open at once: a sorted set per owner or address of lease tokens
  scored by lease expiry; a live stream (or upload) renews its lease while it lasts, so a
  process that dies leaks nothing for long;
- jobs started per minute: a counter per owner or address and minute;
- jobs queued or running: the owner's job index, or a set per address of the jobs it
  started, pruned of finished ones as it is counted.
Per process (`ProcessCaps`): streams and uploads in flight, counted in memory. Globally:
jobs waiting in the queue.

Per-owner and per-address limits answer 429 and can be turned off (`HEADWAY_RATE_LIMITS`);
the process and queue caps protect the server itself, answer 503 and always hold.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import threading
import time
from collections.abc import Callable

import redis

from headway.settings import Settings

# Take one lease in every set, or in none. KEYS: the sets. ARGV: now, lease expiry, token,
# then each set's cap. Returns 0, or the 1-based index of the first set that is full.
ACQUIRE_LEASES = """
local ttl = math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ARGV[1])
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, ARGV[2], ARGV[3])
  redis.call('EXPIRE', key, ttl)
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


class Lease:
    """Slots held in several lease sets under one token; renew while in use, then release."""

    def __init__(self, limits: Limits, keys: list[str], token: str | None, seconds: float):
        self.limits, self.keys, self.token, self.seconds = limits, keys, token, seconds
        self.renewed = time.monotonic()

    def renew(self, every: float) -> None:
        """Extend the slots, at most once per `every` seconds; call it as often as you like."""
        if self.renews_at(every) <= time.monotonic():
            Lease.renew_all([self])

    def renews_at(self, every: float) -> float:
        """When `renew(every)` would next extend the slots (monotonic; inf: never)."""
        return self.renewed + every if self.token else math.inf

    @staticmethod
    def renew_all(leases: list[Lease]) -> None:
        """Extend the slots of each of `leases` (of one Redis) now, in one round trip: one
        ZADD and one EXPIRE per set, however many of the leases are in it (the fan-out
        renews those of every waiting stream, and a visitor's streams share their sets)."""
        leases = [lease for lease in leases if lease.token]
        if not leases:
            return
        now, expiry = time.monotonic(), time.time()
        scores: dict[str, dict[str, float]] = {}
        ttls: dict[str, int] = {}
        for lease in leases:
            lease.renewed = now
            for key in lease.keys:
                scores.setdefault(key, {})[lease.token] = expiry + lease.seconds
                ttls[key] = max(ttls.get(key, 0), math.ceil(lease.seconds) + 1)
        pipe = leases[0].limits.client.pipeline(transaction=False)
        for key, tokens in scores.items():
            pipe.zadd(key, tokens, xx=True)
            # The set must outlive its newest lease, or every slot of streams that stay open
            # vanishes with it one lease after the last one was taken.
            pipe.expire(key, ttls[key])
        pipe.execute()

    def release(self) -> None:
        if self.token:
            self.limits.releases.send(self.keys, self.token)
            self.token = None


class Releases:
    """Leases given back, sent to Redis together: the first to give one back sends it, and
    every one given back while that round trip is under way goes in the next; the others
    return at once. The first caller sends at most `ROUNDS` round trips, so that its own
    response is not held up by a long burst: what is still queued then goes on in a thread
    of its own (a greenlet under gevent), which ends once nothing is left.

    When many streams end at once (every watcher of a job that ends, or of many jobs that
    end together), a round trip each had them queue for the pool's few connections, and
    the fan-out's reads of the changes still to send queued behind them: with 10,000
    streams over 100 jobs that all ended within a second, final states arrived 0.5 s late
    at the p99; sent together, 30-45 ms. Only a lease given back while another is being
    sent can reach Redis after its caller has returned, a round trip or two later. A lease
    that cannot be given back (Redis unreachable) expires by itself.
    """

    ROUNDS = 2

    def __init__(self, client: redis.Redis):
        self.client = client
        self._queued: dict[str, list[str]] = {}  # the tokens to remove, by set
        self._sending = False
        self._lock = threading.Lock()

    def send(self, keys: list[str], token: str) -> None:
        with self._lock:
            for key in keys:
                self._queued.setdefault(key, []).append(token)
            if self._sending:
                return  # in the round trip after the one under way
            self._sending = True
        self._send_queued(self.ROUNDS)

    def _send_queued(self, rounds: float = math.inf) -> None:
        try:
            while True:
                with self._lock:
                    if not self._queued:
                        self._sending = False  # with the lock: no lease is left behind
                        return
                    if rounds <= 0:
                        threading.Thread(target=self._send_queued, daemon=True).start()
                        return
                    queued, self._queued = self._queued, {}
                rounds -= 1
                with contextlib.suppress(redis.RedisError):
                    pipe = self.client.pipeline(transaction=False)
                    for key, tokens in queued.items():
                        pipe.zrem(key, *tokens)
                    pipe.execute()
        except BaseException:  # (a greenlet killed mid-round-trip): the next caller sends
            with self._lock:
                self._sending = False
            raise


class Limits:
    def __init__(self, client: redis.Redis, settings: Settings):
        self.client = client
        self.settings = settings
        self.enabled = settings.rate_limits
        self._acquire = client.register_script(ACQUIRE_LEASES)
        self.releases = Releases(client)

    @property
    def stream_lease(self) -> float:
        return self.settings.keepalive_seconds * 2 + 5

    @property
    def upload_lease(self) -> float:
        return self.settings.upload_rate_window * 2 + 5

    def _lease(self, sets: list[tuple[str, int, str]], seconds: float) -> Lease:
        """Take a slot in each (key, cap, message) set, or raise with the first full one's."""
        if not self.enabled:
            return Lease(self, [], None, seconds)
        token = secrets.token_hex(8)
        now = time.time()
        keys = [key for key, _, _ in sets]
        full = self._acquire(
            keys=keys, args=[now, now + seconds, token, *(cap for _, cap, _ in sets)]
        )
        if full:
            raise LimitExceeded(
                sets[int(full) - 1][2],
                retry_after=max(1, math.ceil(self.settings.keepalive_seconds)),
            )
        return Lease(self, keys, token, seconds)

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
            ],
            self.stream_lease,
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
            self.upload_lease,
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
