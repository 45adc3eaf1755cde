"""The one Huey instance and the job store the worker side writes through.

Importing this module connects to REDIS_URL, or starts the embedded Redis when it is unset.
"""

from __future__ import annotations

import functools

from huey import RedisHuey

from headway.connection import redis_client, resolve_redis_url
from headway.settings import Settings
from headway.store import JobStore

settings = Settings.from_env()
REDIS_URL = resolve_redis_url(settings)

# Job state lives in our own hash; Huey's result store would only duplicate it.
huey = RedisHuey("headway", url=REDIS_URL, results=False, utc=True)


@functools.cache
def job_store() -> JobStore:
    return JobStore(redis_client(REDIS_URL), settings)
