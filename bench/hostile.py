"""Hostile uploads: /healthz latency of one web process while 4 hostile uploads run at once.

Four clients post, over and over, what stalled the event loop before checks left it: two
send 20 CSV files of `,"` ×10,000 each (csv.Sniffer is quadratic in its sample), two send a
zip of 300,000 empty members named as an .xlsx (26 MB). Meanwhile one client asks /healthz
every 20 ms on a keep-alive connection. First the same poller alone, as the baseline.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests

from bench.servers import RedisServer, WebServer

POLL_EVERY = 0.02


@dataclasses.dataclass
class HealthPhase:
    name: str
    latencies: list[float]
    uploads: Counter

    def quantile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        return self.quantile(0.99)

    @property
    def max_ms(self) -> float:
        return max(self.latencies) * 1000


def _quadratic_csvs(folder: Path) -> list[Path]:
    paths = [folder / f"q{i}.csv" for i in range(20)]
    for path in paths:
        path.write_bytes(b',"' * 10_000)
    return paths


def _many_entries(path: Path) -> Path:
    from tests.hostile import many_entry_zip

    return many_entry_zip(path)


def _poll(base: str, stop: threading.Event, latencies: list[float]) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            started = time.monotonic()
            session.get(f"{base}/healthz", timeout=60)
            latencies.append(time.monotonic() - started)
            time.sleep(POLL_EVERY)


def _attack(base: str, files: list[Path], stop: threading.Event, answers: Counter) -> None:
    with requests.Session() as session:
        form = session.get(f"{base}/jobs/new/spreadsheet", timeout=60).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
        while not stop.is_set():
            handles = [("files", (p.name, p.open("rb"))) for p in files]
            try:
                answer = session.post(
                    f"{base}/jobs/new/spreadsheet",
                    data={"csrf_token": token, "output_format": "csv"},
                    files=handles,
                    allow_redirects=False,
                    timeout=120,
                )
                answers[answer.status_code] += 1
            finally:
                for _, (_, handle) in handles:
                    handle.close()


def run_hostile(bench_redis: RedisServer, seconds: float) -> list[HealthPhase]:
    bench_redis.client().flushall()
    folder = Path(tempfile.mkdtemp(prefix="headway-bench-hostile-"))
    csvs, entries = _quadratic_csvs(folder), _many_entries(folder / "entries.xlsx")
    server = WebServer("headway-hostile", "app:create_app()", bench_redis.url)
    phases = []
    try:
        for name, attackers in (
            ("alone", []),
            ("while 4 hostile uploads run at once", [csvs, [entries], csvs, [entries]]),
        ):
            stop, latencies, answers = threading.Event(), [], Counter()
            threads = [threading.Thread(target=_poll, args=(server.base, stop, latencies))]
            threads += [
                threading.Thread(target=_attack, args=(server.base, files, stop, answers))
                for files in attackers
            ]
            for thread in threads:
                thread.start()
            time.sleep(seconds if attackers else min(seconds, 5))
            stop.set()
            for thread in threads:
                thread.join(180)
            phases.append(HealthPhase(name, latencies, answers))
    finally:
        server.stop()
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return phases
