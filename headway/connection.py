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
    """A client whose pool waits for a free connection instead of failing under load."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=10,
        decode_responses=True,
        health_check_interval=30,
        socket_connect_timeout=5,
    )
    return redis.Redis(connection_pool=pool)
