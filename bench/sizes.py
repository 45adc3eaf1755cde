"""Message sizes: what one watcher receives while a job with many item bars runs.

A writer plays an images job: it registers every item, then converts them one at a time
(an item goes running, then done; every 97th fails), logs a line per item and advances the
counts, flushing ten times a second as the real reporter does. One client reads the job's
own stream (`/jobs/<id>/events`) and one the browser's shared stream (`/live?job=<id>`);
each message's size is the bytes of the SSE message as sent.
"""

from __future__ import annotations

import dataclasses
import math
import re
import secrets
import socket
import threading
import time

import redis

from bench.metrics import percentile
from bench.servers import RedisServer, WebServer, session_cookie
from bench.wire import ChunkedDecoder, get_request
from headway.settings import Settings
from headway.store import JobStore
from jobs.reporter import ProgressReporter

RATE = 10  # flushes per second, the reporter's default interval


@dataclasses.dataclass
class SizeResult:
    items: int
    stream: str
    messages: int
    whole_kb: float  # the first message: the whole region
    median_kb: float  # while running, after the first
    max_kb: float
    total_kb: float


FINAL = {  # how each stream says the job has ended
    "/jobs/<id>/events": re.compile(rb"^event: done$", re.M),
    "/live?job=<id>": re.compile(rb"^data: [0-9a-f]{32} \d+ 1 ", re.M),
}


class _Reader(threading.Thread):
    """One SSE client on a blocking socket, noting each message's size until the end."""

    def __init__(self, port: int, path: str, cookie: str, final: re.Pattern):
        super().__init__(daemon=True)
        self.sizes: list[int] = []
        self.final = final
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(get_request(path, port, cookie, "text/event-stream"))

    def run(self) -> None:
        stream = self.sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += stream.read(1)
        chunked = b"chunked" in head.lower()
        decoder, buffer = ChunkedDecoder(), bytearray()
        while data := stream.read1(65536):
            buffer += decoder.feed(data) if chunked else data
            while (end := buffer.find(b"\n\n")) >= 0:
                message = bytes(buffer[: end + 2])
                del buffer[: end + 2]
                if message.startswith((b"retry:", b":")):
                    continue
                self.sizes.append(len(message))
                if self.final.search(message):
                    return


def _job(store: JobStore, owner: str, items: int) -> tuple[str, ProgressReporter]:
    job_id = store.create(kind="bench", owner=owner, title=f"{items} images", stages=["Working"])
    reporter = ProgressReporter(store, job_id, interval=math.inf, max_items=items)
    reporter.flush(status="running", started_at=time.time())
    reporter.stage("Working", total=items)
    for i in range(items):
        reporter.item(i, f"photo-{i:03}.jpg", 0, "pending")
    reporter.flush()
    return job_id, reporter


def _run_job(reporter: ProgressReporter, items: int, ticks: int) -> None:
    """`ticks` flushes at RATE a second; each converts one item (as a fast images job)."""
    started = time.monotonic()
    for tick in range(ticks):
        time.sleep(max(0.0, started + tick / RATE - time.monotonic()))
        i = tick % items
        failed = i % 97 == 96
        reporter.item(i, f"photo-{i:03}.jpg", 100, "failed" if failed else "done")
        reporter.item((i + 1) % items, f"photo-{(i + 1) % items:03}.jpg", 40, "running")
        reporter.log(f"photo-{i:03}.jpg: {'could not be read' if failed else 'converted'}")
        reporter.advance(failed=int(failed), current=f"photo-{i:03}.jpg")
        reporter.flush()
    reporter.flush(status="succeeded", finished_at=time.time(), message="Done")


def run_sizes(bench_redis: RedisServer, ticks: int = 100) -> list[SizeResult]:
    bench_redis.client().flushall()
    server = WebServer("headway", "app:create_app()", bench_redis.url)
    results = []
    try:
        client = redis.Redis.from_url(bench_redis.url, decode_responses=True)
        store = JobStore(client, Settings.from_env(redis_url=bench_redis.url))
        owner = secrets.token_urlsafe(24)
        cookie = session_cookie(owner)
        for items in (500, 10):
            job_id, reporter = _job(store, owner, items)
            paths = {
                "/jobs/<id>/events": f"/jobs/{job_id}/events",
                "/live?job=<id>": f"/live?job={job_id}",
            }
            readers = {
                name: _Reader(server.port, path, cookie, FINAL[name])
                for name, path in paths.items()
            }
            for reader in readers.values():
                reader.start()
            time.sleep(0.5)  # both have the whole state before the job moves
            _run_job(reporter, items, ticks)
            for name, reader in readers.items():
                reader.join(10)
                reader.sock.close()
                sizes = reader.sizes
                running = sizes[1:-1] or sizes
                results.append(
                    SizeResult(
                        items=items,
                        stream=name,
                        messages=len(sizes),
                        whole_kb=sizes[0] / 1000 if sizes else math.nan,
                        median_kb=percentile(running, 50) / 1000,
                        max_kb=max(running) / 1000,
                        total_kb=sum(sizes) / 1000,
                    )
                )
    finally:
        server.stop()
    return results
