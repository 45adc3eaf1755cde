"""Tables (Markdown, printed and written to bench/RESULTS.md) and the machine they ran on."""

from __future__ import annotations

import datetime
import math
import os
import platform
import resource
import sys

import psutil

from bench.fanout import FanoutResult, representative
from bench.hostile import HealthPhase
from bench.polling import Throughput
from bench.reporter_cost import Cost
from bench.sizes import SizeResult
from bench.upload import Transfer, UploadResult

SYSTEMS = {
    "headway": "Headway SSE",
    "flask-sse": "flask-sse",
    "polling": "JSON polling 1/s",
    "floor": "floor (direct writes)",
}


def _num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def fanout_table(results: list[FanoutResult]) -> str:
    headers = [
        "System",
        "Clients",
        "Jobs",
        "Round",
        "Connected",
        "Final state",
        "Versions delivered",
        "Latency p50 ms",
        "p99 ms",
        "max ms",
        "Spread p99 ms",
        "Peak RSS MB",
        "Web CPU s",
        "Web CPU µs/msg",
        "Server fan-out p99 ms",
        "Redis CPU s",
        "Client CPU s",
        "Redis conns",
        "Connect s",
        "Writes/s/job",
        "CPU stolen %",
    ]
    rows = [
        [
            SYSTEMS[r.system],
            f"{r.clients:,}",
            r.jobs,
            r.turn or "–",
            f"{r.connected:,}",
            f"{r.done:,}",
            f"{_num(r.delivered_pct, 1)} %",
            _num(r.p50_ms),
            _num(r.p99_ms),
            _num(r.max_ms),
            _num(r.spread_p99_ms),
            _num(r.rss_mb),
            _num(r.cpu_s, 1),
            _num(r.cpu_per_message_us),
            _num(r.fanout_p99_ms, 1),
            _num(r.redis_cpu_s, 1),
            _num(r.client_cpu_s, 1),
            f"{r.redis_conns:,}",
            _num(r.ramp_s, 1),
            _num(r.writes_per_s, 1),
            _num(r.stolen_pct, 1),
        ]
        for r in results
    ]
    return table(headers, rows)


PEERS = ("flask-sse", "polling", "floor")


def comparison_table(results: list[FanoutResult]) -> str:
    """Headway against each peer, for every client count they share (one job)."""
    by_key = {key: representative(results, *key) for key in {r.scenario for r in results}}
    metrics = [
        ("Clients with the final state", lambda r: r.done, 0),
        ("Latency p50 ms", lambda r: r.p50_ms, 0),
        ("Latency p99 ms", lambda r: r.p99_ms, 0),
        ("Peak RSS MB", lambda r: r.rss_mb, 0),
        ("Web CPU s", lambda r: r.cpu_s, 1),
        ("Web CPU µs per message", lambda r: r.cpu_per_message_us, 0),
        ("Redis CPU s", lambda r: r.redis_cpu_s, 1),
        ("Redis connections", lambda r: r.redis_conns, 0),
    ]
    rows = []
    for (system, clients, jobs), mine in sorted(by_key.items(), key=lambda kv: kv[0][1:]):
        if system != "headway":
            continue
        peers = [by_key.get((peer, clients, jobs)) for peer in PEERS]
        for name, get, digits in metrics:
            row = [f"{clients:,} on {jobs}", name, _num(get(mine), digits)]
            row += [_num(get(p), digits) if p else "–" for p in peers]
            row += [_ratio(get(mine), get(p)) if p else "–" for p in peers]
            rows.append(row)
    headers = ["Clients on jobs", "Metric", "Headway", *(SYSTEMS[p] for p in PEERS)]
    headers += [f"Headway / {SYSTEMS[p]}" for p in PEERS]
    return table(headers, rows)


def _ratio(mine: float, theirs: float) -> str:
    if not theirs or math.isnan(theirs) or math.isnan(mine):
        return "–"
    return f"{mine / theirs:.2f}×"


def reporter_table(costs: list[Cost]) -> str:
    floor = next(c for c in costs if c.name.startswith("floor")).p50_us
    rows = [
        [
            c.name,
            f"{c.calls:,}",
            _num(c.p50_us, 2 if c.p50_us < 10 else 0),
            _num(c.p99_us),
            _num(c.mean_us, 2 if c.mean_us < 10 else 0),
            f"{c.p50_us / floor:.2f}",
            f"{c.writes:,}" if c.name.endswith("(coalesced)") else "1 each",
        ]
        for c in costs
    ]
    headers = ["Operation", "Calls", "p50 µs", "p99 µs", "mean µs", "× floor (p50)", "Writes"]
    return table(headers, rows)


def polling_table(rows: list[Throughput]) -> str:
    headers = ["Endpoint", "Round", "Connections", "Requests/s", "p50 ms", "p99 ms", "Errors"]
    headers += ["Web CPU (cores)", "CPU stolen %"]
    return table(
        headers,
        [
            [
                t.name,
                t.turn or "–",
                t.connections,
                _num(t.rps),
                _num(t.p50_ms, 1),
                _num(t.p99_ms, 1),
                t.errors,
                _num(t.server_cores, 2),
                _num(t.stolen_pct, 1),
            ]
            for t in rows
        ],
    )


def upload_table(result: UploadResult) -> str:
    headers = ["Kind", "File", "HTTP status", "Seconds", "MB/s", "RSS before MB", "Peak RSS MB"]
    headers.append("Growth MB")
    return table(headers, [[f"`{result.what}`", *_transfer_cells(result)]])


def _transfer_cells(t: Transfer) -> list:
    """Size, answer, time, rate and the web process's memory, as the tables show them."""
    return [
        f"{t.size_bytes / 1024**3:.2f} GiB",
        t.status,
        _num(t.seconds, 1),
        _num(t.mb_per_s),
        _num(t.rss_start_mb),
        _num(t.rss_peak_mb),
        _num(t.growth_mb, 1),
    ]


def sizes_table(results: list[SizeResult]) -> str:
    headers = ["Job", "Stream", "Messages", "Whole KB", "Median KB", "Max KB", "Total KB"]
    rows = [
        [
            f"{r.items} items",
            f"`{r.stream}`",
            _num(r.messages),
            _num(r.whole_kb, 1),
            _num(r.median_kb, 2),
            _num(r.max_kb, 2),
            _num(r.total_kb),
        ]
        for r in results
    ]
    return table(headers, rows)


def hostile_table(phases: list[HealthPhase]) -> str:
    headers = ["/healthz", "Requests", "p50 ms", "p99 ms", "max ms", "Upload answers"]
    rows = [
        [
            phase.name,
            _num(len(phase.latencies)),
            _num(phase.p50_ms, 1),
            _num(phase.p99_ms, 1),
            _num(phase.max_ms, 1),
            ", ".join(f"{n} × {status}" for status, n in sorted(phase.uploads.items())) or "–",
        ]
        for phase in phases
    ]
    return table(headers, rows)


def targets_table(targets: list[tuple[str, str, bool, str]]) -> str:
    rows = [
        [name, measured, "met" if ok else "**MISSED**", note]
        for name, measured, ok, note in targets
    ]
    return table(["Target", "Measured", "Result", "Why / note"], rows)


def machine(load_at_start: tuple[float, float, float], stolen: float) -> str:
    """What the figures were measured on, and how busy it was with other work: `stolen`, the
    share of its CPU time the hypervisor gave to other guests during the run (%)."""
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass

    def loads(values) -> str:
        return ", ".join(f"{x:.2f}" for x in values)

    return "\n".join(
        [
            f"- CPUs (`nproc`): {os.cpu_count()} × {model}",
            f"- RAM: {psutil.virtual_memory().total / 1024**3:.1f} GiB",
            f"- Python {sys.version.split()[0]} on {platform.platform()}",
            f"- Open files allowed (hard limit): {resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,}",
            f"- Load average (1, 5, 15 min) at the start: {loads(load_at_start)}; "
            f"at the end: {loads(os.getloadavg())}. The run itself keeps about 2 cores busy; "
            "more means other work (such as test suites) shared the machine and slowed it.",
            f"- CPU time stolen by the hypervisor during the run (`steal` in /proc/stat): "
            f"{_num(stolen, 1)} % of all CPUs' time. A virtual machine's CPUs run only when "
            "the host gives them time; a scenario that lost some ran slower than the code "
            "alone would (its rows give their own share, **CPU stolen %**).",
            f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}",
        ]
    )


def s3_table(result) -> str:
    """Upload and downloads with the S3 backend, one row each."""
    headers = ["Transfer", "Size", "HTTP status", "Seconds", "MB/s", "Web RSS before MB"]
    headers += ["Web peak RSS MB", "Growth MB"]
    upload = result.upload
    rows = [[f"upload (`{upload.what}`), multipart into the bucket", *_transfer_cells(upload)]]
    rows += [[f"download, {t.what}", *_transfer_cells(t)] for t in result.transfers]
    return table(headers, rows)
