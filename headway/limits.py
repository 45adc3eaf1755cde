"""Per-owner limits kept in Redis, so they hold across web processes.

Streams open at once: a sorted set per owner of stream tokens scored by lease expiry; a
live stream renews its lease (and the set's expiry) about once per keepalive interval,
busy or quiet, so a process that dies leaks nothing for long.
Jobs created per minute: a counter per owner and minute.
"""

from __future__ import annotations

import math
import secrets
import time

import redis

from headway.settings import Settings

# KEYS: the owner's stream set. ARGV: now, lease expiry, cap, token.
ACQUIRE_STREAM = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[2]) - tonumber(ARGV[1])) + 1)
return 1
"""


class LimitExceeded(Exception):
    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Limits:
    def __init__(self, client: redis.Redis, settings: Settings):
        self.client = client
        self.settings = settings
        self.enabled = settings.rate_limits
        self._acquire = client.register_script(ACQUIRE_STREAM)

    @property
    def stream_lease(self) -> float:
        return self.settings.keepalive_seconds * 2 + 5

    def open_stream(self, owner: str) -> str | None:
        """Take a stream slot; returns its token, or raises LimitExceeded."""
        if not self.enabled:
            return None
        token = secrets.token_hex(8)
        now = time.time()
        if not self._acquire(
            keys=[f"hw:streams:{owner}"],
            args=[now, now + self.stream_lease, self.settings.max_streams_per_owner, token],
        ):
            raise LimitExceeded(
                f"Too many live streams open ({self.settings.max_streams_per_owner} at most); "
                "close some tabs.",
                retry_after=max(1, math.ceil(self.settings.keepalive_seconds)),
            )
        return token

    def renew_stream(self, owner: str, token: str | None) -> None:
        if token:
            key = f"hw:streams:{owner}"
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, {token: time.time() + self.stream_lease}, xx=True)
            # The set must outlive its newest lease, or every slot of streams that stay open
            # vanishes with it one lease after the last stream was opened.
            pipe.expire(key, math.ceil(self.stream_lease) + 1)
            pipe.execute()

    def close_stream(self, owner: str, token: str | None) -> None:
        if token:
            self.client.zrem(f"hw:streams:{owner}", token)

    def _rate_key(self, owner: str, now: float) -> str:
        return f"hw:rate:{owner}:{int(now // 60)}"

    def check_job(self, owner: str, running_now: int) -> None:
        """Raise LimitExceeded if the owner may not start another job now."""
        if not self.enabled:
            return
        if running_now >= self.settings.running_jobs_per_owner:
            raise LimitExceeded(
                f"You already have {running_now} jobs queued or running "
                f"({self.settings.running_jobs_per_owner} at most); wait for one to finish.",
                retry_after=10,
            )
        now = time.time()
        started = int(self.client.get(self._rate_key(owner, now)) or 0)
        if started >= self.settings.jobs_per_minute:
            raise LimitExceeded(
                f"Too many jobs started this minute ({self.settings.jobs_per_minute} at most).",
                retry_after=60 - int(now % 60),
            )

    def record_job(self, owner: str) -> None:
        """Count a job that was accepted (refused uploads do not count)."""
        if not self.enabled:
            return
        key = self._rate_key(owner, time.time())
        pipe = self.client.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        pipe.execute()
