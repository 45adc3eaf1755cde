"""Where a queued job stands: how many jobs are ahead of it, and about when it will start.

Both are part of each queued job's record (`queue_ahead`, `queue_eta`), written through
`JobStore.update` like any other change, so the job's page and the job list show them live
through the normal change path. They are rewritten whenever the queue moves: a job is
queued, starts, is cancelled before it starts, or ends (which changes the workers' pace).

The estimate: when jobs wait, every worker slot is busy, so the queue moves at the number
of running jobs divided by the recent mean duration of a job. A job with `n` jobs ahead
starts after about `n + 1` of them end. No estimate before any job has ended (the pace is
unknown) nor while no worker is alive.

Rewrites are serialised by a Redis lock and a "dirty" flag: a change that comes while
another process rewrites is picked up by that process before it lets go, so the last
rewrite always reads the newest queue.
"""

from __future__ import annotations

import logging
import time

import redis

from headway.store import CONSUMERS, QUEUED, RUNNING, JobStore

log = logging.getLogger("headway.queueing")

PACE = "hw:pace"  # list: durations (seconds) of the most recently ended jobs, newest first
PACE_SAMPLES = 20
DIRTY = "hw:queue-dirty"
LOCK = "hw:queue-lock"
CONSUMER_LIVE_SECONDS = 15.0
ETA_STEP = 10.0  # estimates are kept in steps of 10 s: no rewrite for noise


def record_duration(store: JobStore, seconds: float) -> None:
    """Count one ended job's run time towards the workers' pace."""
    if seconds <= 0:
        return
    try:
        pipe = store.client.pipeline(transaction=False)
        pipe.lpush(PACE, f"{seconds:.3f}")
        pipe.ltrim(PACE, 0, PACE_SAMPLES - 1)
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("pace not recorded: %s", exc)


def mean_duration(store: JobStore) -> float | None:
    samples = [float(value) for value in store.client.lrange(PACE, 0, -1)]
    return sum(samples) / len(samples) if samples else None


def refresh(store: JobStore) -> None:
    """Bring every queued job's place and estimate up to date; never raises for Redis."""
    try:
        client = store.client
        client.set(DIRTY, "1")
        while client.exists(DIRTY):
            lock = client.lock(LOCK, timeout=30)
            if not lock.acquire(blocking=False):
                return  # its holder sees the flag before it lets go
            try:
                while client.getdel(DIRTY):
                    _rewrite(store)
            finally:
                lock.release()
    except redis.RedisError as exc:
        log.warning("queue positions not updated: %s", exc)


def _rewrite(store: JobStore) -> None:
    client = store.client
    ids = client.zrange(QUEUED, 0, -1)
    if not ids:
        return
    pipe = client.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(store.key(job_id), "status", "queue_ahead", "queue_eta")
    pipe.zcard(RUNNING)
    pipe.zcount(CONSUMERS, time.time() - CONSUMER_LIVE_SECONDS, "+inf")
    *records, running, consumers = pipe.execute()
    queued = [(job_id, r) for job_id, r in zip(ids, records, strict=True) if r[0] == "queued"]
    left = [job_id for job_id, r in zip(ids, records, strict=True) if r[0] != "queued"]
    if left:
        client.zrem(QUEUED, *left)
    # A running job has a live worker too (a consumer's own heartbeat may lag behind).
    mean = mean_duration(store) if consumers or running else None
    for ahead, (job_id, (_, stored_ahead, stored_eta)) in enumerate(queued):
        eta = ""
        if mean is not None:
            seconds = (ahead + 1) * mean / max(1, running)
            eta = f"{max(ETA_STEP, round(seconds / ETA_STEP) * ETA_STEP):.0f}"
        if stored_ahead != str(ahead) or (stored_eta or "") != eta:
            store.update(job_id, {"queue_ahead": ahead, "queue_eta": eta})
