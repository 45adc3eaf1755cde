"""Polling endpoints: requests per second and latency, closed loop, on one web process.

The job is running with 10 item bars and a few log lines, as in the fan-out scenarios.
One connection shows the latency of a lone request; 32 keep-alive connections, each
asking again as soon as it is answered, show the most the process serves.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import subprocess
import sys

from bench.fanout import HeadwayWriter, PeerWriter
from bench.metrics import cpu_seconds
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


def hammer(
    server: WebServer, name: str, path: str, connections: int, duration: float, cookie: str = ""
) -> Throughput:
    """Run the load generator's closed loop against one path."""
    cpu0 = cpu_seconds(server.worker)
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
    )


def run_polling(bench_redis: RedisServer, duration: float) -> list[Throughput]:
    """Headway's progress fragment and JSON, then the peer's JSON, each under load."""
    bench_redis.client().flushall()
    rows = []
    server = WebServer("headway", "app:create_app()", bench_redis.url)
    try:
        owner = secrets.token_urlsafe(24)
        writer = HeadwayWriter(bench_redis.url, 1, owner)
        cookie = session_cookie(owner)
        job_id = writer.ids[0]
        ticks = iter(range(1000))
        for name, path, connections in (
            ("Headway progress fragment", f"/jobs/{job_id}/progress", 1),
            ("Headway progress fragment", f"/jobs/{job_id}/progress", 32),
            ("Headway JSON (/api/jobs/<id>)", f"/api/jobs/{job_id}", 32),
        ):
            for _ in range(30):  # fresh heartbeat, items and log lines before each run
                writer.tick(next(ticks), 1000)
            rows.append(hammer(server, name, path, connections, duration, cookie))
    finally:
        server.stop()
    server = WebServer(
        "peer", "bench.peer_flask_sse:create_app()", bench_redis.url, ready_path="/poll/x"
    )
    try:
        peer = PeerWriter(bench_redis.url, 1)
        peer.tick(0, 100)
        path = peer.paths("poll")[0]
        rows.append(hammer(server, "flask peer JSON (/poll/<id>)", path, 32, duration))
    finally:
        server.stop()
    return rows
