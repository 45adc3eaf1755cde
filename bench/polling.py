"""Polling endpoints: requests per second and latency, closed loop, on one web process.

The job is running with 10 item bars and a few log lines, as in the fan-out scenarios.
One connection shows the latency of a lone request; 32 keep-alive connections, each
asking again as soon as it is answered, show the most the process serves.

Headway's JSON and the flask peer's are compared in rounds that take turns (Headway, peer,
Headway, peer...), both servers up throughout: this machine's speed drifts by tens of per
cent within a minute, and one run of each, a few seconds apart, measured the drift as
often as the difference. The comparison is of the medians.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import statistics
import subprocess
import sys

from bench.fanout import HeadwayWriter, PeerWriter
from bench.metrics import cpu_seconds, stolen_pct, stolen_seconds
from bench.servers import ROOT, RedisServer, WebServer, session_cookie


@dataclasses.dataclass
class Throughput:
    name: str
    connections: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    server_cores: float  # CPU seconds of the web worker per second
    stolen_pct: float  # of the machine's CPU time, taken by other guests of the host meanwhile
    turn: int = 0  # of the rounds that take turns (0: measured once)


def hammer(
    server: WebServer,
    name: str,
    path: str,
    connections: int,
    duration: float,
    cookie: str = "",
    turn: int = 0,
) -> Throughput:
    """Run the load generator's closed loop against one path."""
    cpu0, stolen0 = cpu_seconds(server.worker), stolen_seconds()
    command = [sys.executable, "-m", "bench.loadgen", "--port", str(server.port)]
    command += ["--mode", "hammer", "--clients", str(connections), "--paths", path]
    command += ["--cookie", cookie, "--duration", str(duration)]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return Throughput(
        name=name,
        connections=connections,
        requests=result["requests"],
        errors=result["errors"],
        rps=result["rps"],
        p50_ms=result["latency_ms"]["p50"],
        p99_ms=result["latency_ms"]["p99"],
        server_cores=(cpu_seconds(server.worker) - cpu0) / duration,
        stolen_pct=stolen_pct(stolen0, duration),
        turn=turn,
    )


ROUNDS = 3  # of Headway's JSON and the peer's, taking turns


def run_polling(bench_redis: RedisServer, duration: float) -> list[Throughput]:
    """Headway's progress fragment, then Headway's JSON and the peer's in turns."""
    bench_redis.client().flushall()
    rows = []
    servers = []
    try:
        server = WebServer("headway", "app:create_app()", bench_redis.url)
        servers.append(server)
        peer_server = WebServer(
            "peer", "bench.peer_flask_sse:create_app()", bench_redis.url, ready_path="/poll/x"
        )
        servers.append(peer_server)
        owner = secrets.token_urlsafe(24)
        writer = HeadwayWriter(bench_redis.url, 1, owner)
        cookie = session_cookie(owner)
        job_id = writer.ids[0]
        ticks = iter(range(1000))

        def fresh() -> None:  # a fresh heartbeat, items and log lines before each run
            for _ in range(30):
                writer.tick(next(ticks), 1000)

        for connections in (1, 32):
            fresh()
            path = f"/jobs/{job_id}/progress"
            rows.append(
                hammer(server, "Headway progress fragment", path, connections, duration, cookie)
            )
        peer = PeerWriter(bench_redis.url, 1)
        peer.tick(0, 100)
        for n in range(1, ROUNDS + 1):
            fresh()
            rows.append(hammer(server, JSON, f"/api/jobs/{job_id}", 32, duration, cookie, n))
            rows.append(hammer(peer_server, PEER_JSON, peer.paths("poll")[0], 32, duration, "", n))
    finally:
        for started in servers:
            started.stop()
    return rows


JSON = "Headway JSON (/api/jobs/<id>)"
PEER_JSON = "flask peer JSON (/poll/<id>)"


def median_rps(rows: list[Throughput], name: str) -> float:
    """The median requests/s of the rounds of `name` (NaN if none ran)."""
    rates = sorted(row.rps for row in rows if row.name == name)
    return statistics.median(rates) if rates else math.nan
