"""What a progress report costs the worker: coalesced calls, real writes, and the floor.

A coalesced call is what job code pays per `reporter.advance()` between writes. A real
write is one `reporter.flush()`: the snapshot, the atomic Lua update and its PUBLISH. The
floor is the least any design could pay for a write that others see: HSET + PUBLISH,
pipelined without MULTI, in one round trip.
"""

from __future__ import annotations

import dataclasses
import time

import redis

from bench.metrics import percentile
from bench.servers import RedisServer
from headway.settings import Settings
from headway.store import CHANNEL, JobStore, format_log_line
from jobs.reporter import ProgressReporter


@dataclasses.dataclass
class Cost:
    name: str
    calls: int
    p50_us: float
    p99_us: float
    mean_us: float
    writes: int = 0  # Redis writes the calls caused


def _timed(name: str, calls: int, action) -> Cost:
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1e6)
    return Cost(name, calls, percentile(samples, 50), percentile(samples, 99), sum(samples) / calls)


def run_reporter_cost(bench_redis: RedisServer, calls: int, writes: int) -> list[Cost]:
    """`calls` coalesced report calls in a tight loop; `writes` timed writes of each kind."""
    client = redis.Redis.from_url(bench_redis.url, decode_responses=True)
    store = JobStore(client, Settings.from_env(redis_url=bench_redis.url))
    job_id = store.create(kind="bench", owner="bench", title="Reporter cost", stages=["Working"])
    reporter = ProgressReporter(store, job_id, stages=[("Working", 1.0)])  # default interval
    reporter.stage("Working", total=calls)
    reporter.flush(status="running", started_at=time.time())

    version = store.get(job_id).version
    started = time.perf_counter()
    for _ in range(calls):
        reporter.advance()
    elapsed = time.perf_counter() - started
    coalesced_per_call = elapsed / calls * 1e6
    coalesced = Cost(
        "reporter.advance() (coalesced)",
        calls,
        coalesced_per_call,
        float("nan"),
        coalesced_per_call,
        writes=store.get(job_id).version - version,
    )

    def flush() -> None:
        reporter.advance(current="item.dat")
        reporter.flush()

    fields = {  # no progress: the loop above already reached 100 %, lower would be refused
        "current": "item.dat",
        "message": "Working",
        "heartbeat": f"{time.time():.3f}",
    }
    key = JobStore.key(job_id)

    def floor() -> None:
        pipe = client.pipeline(transaction=False)
        pipe.hset(key, mapping=fields)
        pipe.publish(CHANNEL, f"{job_id} bench")
        pipe.execute()

    line = format_log_line("one log line")
    results = [
        coalesced,
        _timed("reporter.flush() (real write)", writes, flush),
        _timed(
            "JobStore.update (Lua: check, HSET, PUBLISH)",
            writes,
            lambda: store.update(job_id, fields),
        ),
        _timed(
            "JobStore.update with a log line",
            writes,
            lambda: store.update(job_id, log_lines=[line]),
        ),
        _timed("floor: HSET + PUBLISH, pipelined, no MULTI", writes, floor),
        _timed("PING (one bare round trip)", writes, client.ping),
    ]
    store.update(job_id, {"status": "succeeded", "finished_at": time.time()})
    return results
