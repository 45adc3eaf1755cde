"""What is measured on the server side (memory, CPU, Redis connections) and how figures read."""

from __future__ import annotations

import contextlib
import math
import threading

import psutil


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cpu_seconds(process: psutil.Process) -> float:
    """The process's CPU so far; NaN once it is gone (a server's worker killed mid-run, for
    a heartbeat missed past gunicorn's timeout: its log, in the report, says so)."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return math.nan
    return times.user + times.system


def stolen_seconds() -> float:
    """CPU time the hypervisor gave to other guests while this machine's CPUs wanted it,
    summed over every CPU since boot (Linux's `steal` in /proc/stat); NaN where not told."""
    return getattr(psutil.cpu_times(), "steal", math.nan)


def stolen_pct(since: float, seconds: float) -> float:
    """The share of all CPUs' time stolen since `stolen_seconds()` read `since`, over a span
    of `seconds`: what a figure measured in that span lost to other guests of the host."""
    cpus = psutil.cpu_count() or 1
    return 100 * (stolen_seconds() - since) / (seconds * cpus) if seconds > 0 else math.nan


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
    """Samples a process's RSS while in use.

    `with ProcessWatch(proc) as w: ...` then w.start_rss, w.peak_rss. (Its Redis
    connections are counted by `redis_connections`, not here: with ten thousand sockets
    open, one count takes half a second of the clients' core.)
    """

    def __init__(self, process: psutil.Process, *, interval: float = 0.1):
        self.process = process
        self.interval = interval
        self.start_rss = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self.start_rss = self.peak_rss = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(psutil.Error):
                self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)


def mb(nbytes: float) -> float:
    return nbytes / 1024**2
