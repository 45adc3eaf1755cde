"""The worker entry point: `python -m jobs.worker` runs a Huey consumer for Headway's jobs.

Besides the consumer it keeps a heartbeat of its own in Redis (sorted set `hw:consumers`),
so that /healthz can count live consumers.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import redis

from headway.store import CONSUMERS
from jobs import (
    runner,  # registers the task, signals and periodic sweeps
    sandbox,
)
from jobs.queue import huey, job_store, settings

log = logging.getLogger("headway.worker")

CONSUMER_BEAT = 5.0


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def beat_forever(name: str, stop: threading.Event) -> None:
    client = job_store().client
    while not stop.is_set():
        try:
            client.zadd(CONSUMERS, {name: time.time()})
            client.zremrangebyscore(CONSUMERS, "-inf", time.time() - 3 * CONSUMER_BEAT)
        except redis.RedisError as exc:
            log.warning("consumer heartbeat failed: %s", exc)
        stop.wait(CONSUMER_BEAT)


def start_heartbeat() -> threading.Event:
    stop = threading.Event()
    threading.Thread(
        target=beat_forever, args=(consumer_name(), stop), daemon=True, name="consumer-heartbeat"
    ).start()
    return stop


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("HEADWAY_LOG_LEVEL", "info").upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    start_heartbeat()
    swept = runner.sweep_work_folders(settings)
    if swept:
        log.info("removed %d attempt folders left by stopped workers", swept)
    sandbox.warm_up()
    consumer = huey.create_consumer(workers=settings.workers, worker_type="thread")
    log.info("worker %s: %d threads", consumer_name(), settings.workers)
    consumer.run()


if __name__ == "__main__":
    main()
