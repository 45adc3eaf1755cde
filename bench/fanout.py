"""Fan-out: N simulated browsers watch jobs while a worker reports 10 updates a second.

One scenario = one fresh web process (Headway, or the flask-sse peer), one load generator
process holding N clients, and a writer in this process playing the worker. Phases:
ramp (clients connect; the worker only keeps its heartbeat), measure (10 writes a second per
job for `duration` seconds, then the final state), drain (until every connected client has
the final state, or `drain` seconds). Latency = arrival wall time − write wall time.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import redis

from bench.metrics import (
    ProcessWatch,
    cpu_seconds,
    mb,
    redis_connections,
    stolen_pct,
    stolen_seconds,
)
from bench.servers import (
    ALL_CPUS,
    OTHER_CPUS,
    ROOT,
    WEB_CPU,
    RedisServer,
    WebServer,
    pin,
    session_cookie,
    spawn,
)
from headway.settings import Settings
from headway.store import JobStore, UpdateResult
from jobs.reporter import ProgressReporter

RATE = 10  # updates per second per job
HEARTBEAT_EVERY = 5.0  # while clients connect, as the real reporter's heartbeat would
PING_EVERY = 0.5  # flask-sse only: an event so that waiting clients get response headers
PEER_PAYLOAD = "".join(  # about the size of Headway's message while a job runs (2.3 KB)
    f'<li class="item"><span>item-{i}.dat</span><div class="bar"><div style="width: 50%">'
    f"</div></div></li>\n"
    for i in range(50)
)[:2300]


# Headway's stream limits on, as in production (each stream takes a slot in Redis and gives it
# back), with caps that let one visitor from one address hold every stream here.
LIMITS_ON = {
    "HEADWAY_RATE_LIMITS": "on",
    "HEADWAY_MAX_STREAMS_PER_OWNER": "11000",
    "HEADWAY_MAX_STREAMS_PER_ADDRESS": "11000",
}


@dataclasses.dataclass
class FanoutResult:
    system: str
    clients: int
    jobs: int
    connected: int
    done: int
    delivered: int  # versions that arrived as their own message
    expected: int  # versions written while the client was connected
    p50_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float
    cpu_s: float
    redis_cpu_s: float
    client_cpu_s: float  # the load generator's, to show whether the clients kept up
    messages: int  # responses (polling) or messages with an id (SSE) the clients received
    redis_conns: int
    ramp_s: float
    measure_s: float  # the 10-a-second phase and the drain: the span of cpu_s
    stolen_pct: float  # of the machine's CPU time over measure_s, taken by other guests
    writes_per_s: float
    errors: dict  # client side: why streams ended without the final state
    server_log: dict  # server side: its warnings, by message
    # Headway and the floor, measured in the server: from a change's notice (the floor: from
    # taking its message off the subscription) to its last write
    fanout_p99_ms: float = math.nan
    spread_p50_ms: float = math.nan  # a version's first to last receipt among the clients
    spread_p99_ms: float = math.nan
    # the p99 split: every version but the final states, and the final states alone
    p99_updates_ms: float = math.nan
    p99_finals_ms: float = math.nan
    turn: int = 0  # of the rounds Headway and the floor take in turns (0: run once)

    @property
    def scenario(self) -> tuple[str, int, int]:
        return self.system, self.clients, self.jobs

    @property
    def delivered_pct(self) -> float:
        return 100.0 * self.delivered / self.expected if self.expected else math.nan

    @property
    def cpu_per_message_us(self) -> float:
        return self.cpu_s * 1e6 / self.messages if self.messages else math.nan


def representative(results: list[FanoutResult], system: str, clients: int, jobs: int = 1):
    """The result of `system` at `clients` on `jobs`: of several rounds, the one with the
    median p99 (every figure from that one run); None when it did not run."""
    runs = sorted(
        (r for r in results if r.scenario == (system, clients, jobs)),
        key=lambda r: (math.isnan(r.p99_ms), r.p99_ms),
    )
    return runs[(len(runs) - 1) // 2] if runs else None


class _RecordingStore(JobStore):
    """The real store; also notes the wall time at which each accepted version was written."""

    def __init__(self, client: redis.Redis, settings: Settings):
        super().__init__(client, settings)
        self.writes: dict[str, dict[str, float]] = {}

    def update(self, job_id: str, fields=None, **kwargs) -> UpdateResult:
        started = time.time()
        result = super().update(job_id, fields, **kwargs)
        if result.ok:
            self.writes.setdefault(job_id, {})[str(result.version)] = started
        return result


class HeadwayWriter:
    """The worker side: one real ProgressReporter per job, writing only when told to."""

    def __init__(self, redis_url: str, jobs: int, owner: str):
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.store = _RecordingStore(client, Settings.from_env(redis_url=redis_url))
        self.ids = [
            self.store.create(kind="bench", owner=owner, title=f"Bench {i}", stages=["Working"])
            for i in range(jobs)
        ]
        # an infinite interval: nothing is written but the explicit flushes below
        self.reporters = [
            ProgressReporter(self.store, job_id, interval=math.inf) for job_id in self.ids
        ]
        for reporter in self.reporters:
            reporter.flush(status="running", started_at=time.time())
        self._last_beat = time.monotonic()

    def paths(self, mode: str) -> list[str]:
        """What the clients GET: Headway's job streams (the fan-out runs no Headway polling)."""
        return [f"/jobs/{job_id}/events" for job_id in self.ids]

    def idle(self) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_EVERY:
            for reporter in self.reporters:
                reporter.flush()
            self._last_beat = time.monotonic()

    def tick(self, i: int, total: int) -> None:
        for k in range(len(self.reporters)):
            self.tick_job(k, i, total)

    def tick_job(self, k: int, i: int, total: int) -> None:
        reporter = self.reporters[k]
        reporter.set(done=i + 1, total=total, current=f"item-{i}.dat")
        reporter.item(i % 10, f"item-{i % 10}.dat", 100.0 * (i + 1) / total)
        if i % 10 == 0:
            reporter.log(f"{i + 1} of {total} done")
        reporter.flush()

    def finish(self) -> None:
        for k in range(len(self.reporters)):
            self.finish_job(k)

    def finish_job(self, k: int) -> None:
        self.reporters[k].flush(status="succeeded", finished_at=time.time(), message="Done")

    def writes(self) -> dict[str, dict[str, float]]:
        return {str(i): self.store.writes.get(job_id, {}) for i, job_id in enumerate(self.ids)}


class PeerWriter:
    """The peer's worker side: HSET the state and publish flask-sse's message, per update."""

    def __init__(self, redis_url: str, jobs: int):
        from bench import peer_flask_sse  # flask-sse is installed by the time this runs

        self.peer = peer_flask_sse
        self.client = redis.Redis.from_url(redis_url, decode_responses=True)
        self.ids = [secrets.token_hex(16) for _ in range(jobs)]
        self.versions = dict.fromkeys(self.ids, 0)
        self._writes: dict[str, dict[str, float]] = {job: {} for job in self.ids}
        self._last_ping = 0.0
        for job in self.ids:
            self._write(job, "running", 0.0)

    def paths(self, mode: str) -> list[str]:
        if mode == "poll":
            return [f"/poll/{job}" for job in self.ids]
        return [f"/stream?channel={self.peer.channel(job)}" for job in self.ids]

    def _write(self, job: str, status: str, progress: float) -> None:
        self.versions[job] += 1
        version = self.versions[job]
        state = {"version": version, "status": status, "progress": f"{progress:.1f}"}
        payload = f'<section id="job-progress" data-version="{version}">\n{PEER_PAYLOAD}</section>'
        started = time.time()
        self.peer.publish_state(self.client, job, state, payload)
        self._writes[job][str(version)] = started

    def idle(self) -> None:
        if time.monotonic() - self._last_ping >= PING_EVERY:
            for job in self.ids:
                self.peer.publish_ping(self.client, job)
            self._last_ping = time.monotonic()

    def tick(self, i: int, total: int) -> None:
        for k in range(len(self.ids)):
            self.tick_job(k, i, total)

    def tick_job(self, k: int, i: int, total: int) -> None:
        self._write(self.ids[k], "running", 100.0 * (i + 1) / total)

    def finish(self) -> None:
        for k in range(len(self.ids)):
            self.finish_job(k)

    def finish_job(self, k: int) -> None:
        self._write(self.ids[k], "succeeded", 100.0)

    def writes(self) -> dict[str, dict[str, float]]:
        return {str(i): self._writes[job] for i, job in enumerate(self.ids)}


class FloorWriter(PeerWriter):
    """The floor's worker side: each version framed as SSE once, published to the job's
    channel; the floor server writes those bytes as they are to every watching socket."""

    def paths(self, mode: str) -> list[str]:
        return [f"/stream/{job}" for job in self.ids]

    def _write(self, job: str, status: str, progress: float) -> None:
        self.versions[job] += 1
        version = self.versions[job]
        event = "done" if status == "succeeded" else "progress"
        lines = "".join(f"data: {line}\n" for line in PEER_PAYLOAD.splitlines())
        message = f"id: {version}\nevent: {event}\n{lines}\n"
        started = time.time()
        self.client.publish(f"floor:{job}", message)
        self._writes[job][str(version)] = started

    def idle(self) -> None:
        # A client counts as connected at its first message: an id-less ping, as the peer's.
        if time.monotonic() - self._last_ping >= PING_EVERY:
            for job in self.ids:
                self.client.publish(f"floor:{job}", "event: ping\ndata: -\n\n")
            self._last_ping = time.monotonic()


class FloorServer:
    """`python -m bench.floor`, with the interface of a WebServer that fanout needs."""

    def __init__(self, redis_url: str):
        from bench.servers import LOGS, free_port

        self.name = "floor"
        self.port = free_port()
        self.log_path = LOGS / "floor.log"
        self.process = spawn(
            [sys.executable, "-m", "bench.floor", "--port", str(self.port), "--redis", redis_url],
            "floor",
            cwd=ROOT,
        )
        self.worker = psutil.Process(self.process.pid)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the floor server did not start") from None
                time.sleep(0.1)

    def log_messages(self) -> dict[str, int]:
        return {}

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


class LoadGenerator:
    """The `bench.loadgen` process, its latest status line and its final result."""

    def __init__(self, port: int, mode: str, clients: int, paths: list[str], cookie: str = ""):
        self.status = {"ready": 0, "done": 0, "failed": 0, "open": 0}
        self.result: dict | None = None
        command = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--mode", mode]
        command += ["--clients", str(clients), "--cookie", cookie, "--paths", *paths]
        self.process = spawn(
            command,
            "loadgen",
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        for line in self.process.stdout:
            message = json.loads(line)
            if message.pop("type") == "status":
                self.status = message
            else:
                self.result = message

    def wait(self, condition, timeout: float, while_waiting=lambda: None) -> float:
        """Wait until `condition(status)` or `timeout`; returns the seconds waited."""
        started = time.monotonic()
        while not condition(self.status) and time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError("load generator died; see bench/.work/logs/loadgen.log")
            while_waiting()
            time.sleep(0.05)
        return time.monotonic() - started

    def stop(self, writes: dict) -> dict:
        """Close every client and summarize what arrived against `writes`."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "writes.json"
            path.write_text(json.dumps(writes))
            self.process.stdin.write(f"stop {path}\n")
            self.process.stdin.flush()
            self.process.wait(120)
        self._reader.join(10)
        return self.result or {}


def _written_since(writes: dict[str, dict[str, float]], moment: float) -> dict:
    """The versions written from `moment` (wall time) on: the measured span's.

    Headway's writer keeps each job's heartbeat while clients connect, and each heartbeat
    is a version; those written once a job's own clients were all connected were counted,
    while thousands of other clients still connected and the load generator then paused
    for its collection (0.2 s with 10,000 clients). The floor's writer sends only pings
    then, so only Headway was measured there: with 10,000 streams its updates' p99 was 467
    and 491 ms in two runs of four, and 10-29 ms in four runs without those versions.
    """
    return {
        job: {v: t for v, t in versions.items() if t >= moment} for job, versions in writes.items()
    }


def run_fanout(
    system: str,
    clients: int,
    jobs: int,
    duration: float,
    bench_redis: RedisServer,
    *,
    ramp: float = 60.0,
    drain: float = 30.0,
    rate: float = RATE,
    stagger: bool = False,
) -> FanoutResult:
    """One scenario. `system`: "headway" (SSE), "flask-sse", "polling" (the peer's JSON) or
    "floor" (bench/floor.py: the least a server can do)."""
    bench_redis.client().flushall()
    mode = "poll" if system == "polling" else "sse"
    if system == "headway":
        server = WebServer("headway", "app:create_app()", bench_redis.url, env=LIMITS_ON)
    elif system == "floor":
        server = FloorServer(bench_redis.url)
    else:
        server = WebServer(
            "peer", "bench.peer_flask_sse:create_app()", bench_redis.url, ready_path="/poll/x"
        )
    redis_process = psutil.Process(bench_redis.pid)
    load = None
    try:
        if system == "headway":
            owner = secrets.token_urlsafe(24)
            writer, cookie = HeadwayWriter(bench_redis.url, jobs, owner), session_cookie(owner)
        elif system == "floor":
            writer, cookie = FloorWriter(bench_redis.url, jobs), ""
        else:
            writer, cookie = PeerWriter(bench_redis.url, jobs), ""
        load = LoadGenerator(server.port, mode, clients, writer.paths(mode), cookie)
        # One core for the web process under test, the other for everything else (clients,
        # Redis, the writer), so that they do not take turns on the same core.
        pin(server.worker, WEB_CPU)
        for other in (psutil.Process(load.pid), redis_process, psutil.Process()):
            pin(other, OTHER_CPUS)
        with ProcessWatch(server.worker) as watch:
            ramp_s = load.wait(
                lambda s: s["ready"] + s["failed"] >= clients, ramp, while_waiting=writer.idle
            )
            # Counted between the measured spans (a count reads every socket of the box):
            # once everyone is connected, and once all is over; pools keep what they open.
            redis_conns = redis_connections(server.worker, bench_redis.port)
            client_process = psutil.Process(load.pid)
            cpu0, redis_cpu0 = cpu_seconds(server.worker), cpu_seconds(redis_process)
            client_cpu0, stolen0 = cpu_seconds(client_process), stolen_seconds()
            ticks = round(duration * rate)
            started, measured_from = time.monotonic(), time.time()
            for i in range(ticks):
                if not stagger:  # every job at once, the worst case
                    time.sleep(max(0.0, started + i / rate - time.monotonic()))
                    writer.tick(i, ticks)
                    continue
                for k in range(jobs):  # each job at its own moment, as independent jobs
                    time.sleep(max(0.0, started + (i + k / jobs) / rate - time.monotonic()))
                    writer.tick_job(k, i, ticks)
            writes_per_s = ticks / max(time.monotonic() - started, 1e-9)
            # The final state at the same pace, one tick after the last (and each job at
            # its own moment when they stagger): right behind the last update, a stream
            # would rightly skip that update for the newer state.
            if stagger:
                for k in range(jobs):
                    time.sleep(max(0.0, started + (ticks + k / jobs) / rate - time.monotonic()))
                    writer.finish_job(k)
            else:
                time.sleep(max(0.0, started + ticks / rate - time.monotonic()))
                writer.finish()
            load.wait(lambda s: s["open"] == 0, drain)
            measure_s = time.monotonic() - started
            stolen = stolen_pct(stolen0, measure_s)
            fanout_p99 = _server_fanout_p99(server) if system in ("headway", "floor") else math.nan
            cpu = cpu_seconds(server.worker) - cpu0
            redis_cpu = cpu_seconds(redis_process) - redis_cpu0
            client_cpu = cpu_seconds(client_process) - client_cpu0
            redis_conns = max(redis_conns, redis_connections(server.worker, bench_redis.port))
        result = load.stop(_written_since(writer.writes(), measured_from))
    finally:
        pin(psutil.Process(), ALL_CPUS)
        server.stop()
        if load is not None and load.process.poll() is None:
            load.process.kill()
    server_log = server.log_messages()
    latency = result.get("latency_ms", {})
    return FanoutResult(
        system=system,
        clients=clients,
        jobs=jobs,
        connected=result.get("connected", 0),
        done=result.get("done", 0),
        delivered=result.get("delivered", 0),
        expected=result.get("expected", 0),
        p50_ms=latency.get("p50", math.nan),
        p99_ms=latency.get("p99", math.nan),
        max_ms=latency.get("max", math.nan),
        rss_mb=mb(watch.peak_rss),
        cpu_s=cpu,
        redis_cpu_s=redis_cpu,
        client_cpu_s=client_cpu,
        messages=result.get("requests") or result.get("messages", 0),
        redis_conns=redis_conns,
        ramp_s=ramp_s,
        measure_s=measure_s,
        stolen_pct=stolen,
        writes_per_s=writes_per_s,
        errors=result.get("errors", {}),
        server_log=server_log,
        fanout_p99_ms=fanout_p99,
        spread_p50_ms=result.get("spread_ms", {}).get("p50", math.nan),
        spread_p99_ms=result.get("spread_ms", {}).get("p99", math.nan),
        p99_updates_ms=latency.get("updates_p99", math.nan),
        p99_finals_ms=latency.get("finals_p99", math.nan),
    )


def _server_fanout_p99(server: WebServer | FloorServer) -> float:
    """What the server measured of its own fan-out: Headway's `/healthz`, the floor's
    `/timing`."""
    import requests

    try:
        if isinstance(server, FloorServer):
            timing = requests.get(f"http://127.0.0.1:{server.port}/timing", timeout=10).json()
        else:
            timing = requests.get(server.base + "/healthz", timeout=10).json().get("fanout", {})
    except (requests.RequestException, ValueError) as exc:  # the run's other figures stand
        print(f"  (no fan-out timing from {server.name}: {exc})", flush=True)
        return math.nan
    p99 = timing.get("p99_ms")
    return math.nan if p99 is None else p99
