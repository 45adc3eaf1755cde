"""Redis connections: one URL per process, one bounded blocking pool per URL."""

from __future__ import annotations

import functools
import os

import redis

from headway.redis_server import ensure_embedded_redis
from headway.settings import Settings


def resolve_redis_url(settings: Settings) -> str:
    """REDIS_URL when set; otherwise the embedded server, started or found.

    The URL is exported so that processes started from this one share the server.
    """
    if settings.redis_url:
        return settings.redis_url
    url = ensure_embedded_redis(settings.instance_path)
    os.environ["REDIS_URL"] = url
    return url


@functools.cache
def redis_client(url: str) -> redis.Redis:
    """A client whose small pool waits for a free connection instead of failing under load.

    Streams share their reads (headway.web.renders), so a web process has few commands in
    flight however many browsers watch; a handful of connections serves them all.
    """
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=4,
        timeout=10,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_timeout=30,  # no command of ours takes long: a hung connection is a dead one
        **_keepalive(url),
    )
    return redis.Redis(connection_pool=pool)


def subscriber_client(url: str) -> redis.Redis:
    """A client of its own for a long-lived subscription, which holds its connection for
    good: taken from the shared pool, it would shrink what commands have.

    It speaks RESP2, where a message is a plain reply: redis-py 8 hands each RESP3 push to
    a handler that formats it whole (notices carry changes of up to 4 KB) for a debug line.
    """
    return redis.Redis.from_url(
        url, decode_responses=True, socket_connect_timeout=5, protocol=2, **_keepalive(url)
    )


def _keepalive(url: str) -> dict:
    """TCP keepalive, so that the kernel notices a peer gone silent (TCP only)."""
    return {} if url.startswith("unix:") else {"socket_keepalive": True}
