"""The one Huey instance and the job store the worker side writes through.

Importing this module connects to REDIS_URL, or starts the embedded Redis when it is unset.
"""

from __future__ import annotations

import functools

import redis
from huey import RedisHuey

from headway.connection import redis_client, resolve_redis_url
from headway.settings import Settings
from headway.store import JobStore

settings = Settings.from_env()
REDIS_URL = resolve_redis_url(settings)

# Job state lives in our own hash; Huey's result store would only duplicate it. Huey keeps
# a pool of its own (it reads bytes; ours decodes), bounded like ours: the worker's threads
# each hold one while they wait for a task, and a web process needs one to enqueue, however
# many submit at once (they wait their turn instead of opening a connection each).
huey = RedisHuey(
    "headway",
    connection_pool=redis.BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=settings.workers + 2, timeout=10
    ),
    results=False,
    utc=True,
)


@functools.cache
def job_store() -> JobStore:
    return JobStore(redis_client(REDIS_URL), settings)
