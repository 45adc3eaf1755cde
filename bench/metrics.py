"""What is measured on the server side (memory, CPU, Redis connections) and how figures read."""

from __future__ import annotations

import contextlib
import math
import threading
import time

import psutil


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def redis_connections(process: psutil.Process, redis_port: int) -> int:
    """TCP connections from `process` to the Redis port: what the process holds open."""
    with contextlib.suppress(psutil.Error):
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == redis_port and c.status == psutil.CONN_ESTABLISHED
        )
    return 0


class ProcessWatch:
    """Samples a process's RSS (and its Redis connections, less often) while in use.

    `with ProcessWatch(proc) as w: ...` then w.start_rss, w.peak_rss, w.redis_peak.
    """

    def __init__(
        self,
        process: psutil.Process,
        *,
        redis_port: int | None = None,
        interval: float = 0.1,
        redis_every: float = 1.0,
    ):
        self.process = process
        self.redis_port = redis_port
        self.interval = interval
        self.redis_every = redis_every
        self.start_rss = 0
        self.peak_rss = 0
        self.redis_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self.start_rss = self.peak_rss = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def count_redis_now(self) -> None:
        if self.redis_port is not None:
            count = redis_connections(self.process, self.redis_port)
            self.redis_peak = max(self.redis_peak, count)

    def _sample(self) -> None:
        next_redis = time.monotonic()
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            if self.redis_port is not None and time.monotonic() >= next_redis:
                self.count_redis_now()
                next_redis = time.monotonic() + self.redis_every


def mb(nbytes: float) -> float:
    return nbytes / 1024**2
