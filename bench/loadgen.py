"""The load generator: thousands of simulated browsers in one asyncio process.

    python -m bench.loadgen --port P --mode sse|poll|hammer --clients N --paths P1 [P2 ...]

`sse`: every client holds one event stream and records, per message carrying an id, the
version and the wall time it arrived. `poll`: every client GETs a JSON state once per
`--period` until the state is final. Both print a status line (JSON) twice a second and, on
the line `stop <writes.json>` on stdin, close everything, compare what arrived with the
wall time of each write (same machine, same clock) and print one result line (JSON). Only
versions written after every client of their job connected are counted.
`hammer`: `--clients` keep-alive connections request as fast as they can for `--duration`.
Client i watches paths[i % len(paths)]; the writes file maps path index -> version -> time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from array import array

from bench.metrics import percentile
from bench.servers import raise_file_limit
from bench.wire import ChunkedDecoder, SseParser, get_request, read_body, read_head

CONNECT_TIMEOUT = 60.0  # a client not answered by then has failed to connect
IN_FLIGHT = 256  # connections being opened at once (a browser crowd arriving, not a SYN flood)
FINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})


class Client:
    """What one simulated browser saw."""

    __slots__ = (
        "done",
        "ended",
        "error",
        "job",
        "requests",
        "status",
        "t_ready",
        "times",
        "versions",
    )

    def __init__(self, job: int):
        self.job = job
        self.status = 0
        self.t_ready = 0.0  # when its first message (SSE) or first response (polling) arrived
        self.done = False  # received the final state
        self.ended = False  # stopped listening, with the final state or not
        self.error = ""
        self.versions = array("q")
        self.times = array("d")
        self.requests = 0  # polling: responses received


async def _open(port: int, path: str, cookie: str, accept: str, gate: asyncio.Semaphore):
    """Connect and send the GET; the gate opens again at the response head or after 1 s."""
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT
        )
        writer.write(get_request(path, port, cookie, accept))
        head = asyncio.ensure_future(read_head(reader))
        await asyncio.wait({head}, timeout=1.0)
    status, headers = await asyncio.wait_for(head, CONNECT_TIMEOUT)
    return reader, writer, status, headers


async def sse_client(c: Client, port: int, path: str, cookie: str, gate) -> None:
    """Hold one event stream until its `done` message (or until cancelled)."""
    writer = None
    try:
        reader, writer, c.status, headers = await _open(
            port, path, cookie, "text/event-stream", gate
        )
        if c.status != 200:
            c.error = f"HTTP {c.status}"
            return
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        decoder, parser = ChunkedDecoder(), SseParser()
        while data := await reader.read(65536):
            now = time.time()
            for event, event_id in parser.feed(decoder.feed(data) if chunked else data):
                if not c.t_ready:
                    c.t_ready = now
                if event_id is not None and event_id.isdigit():
                    c.versions.append(int(event_id))
                    c.times.append(now)
                if event == "done":
                    c.done = True
                    return
        c.error = c.error or "closed before done"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        c.error = type(exc).__name__
    finally:
        c.ended = True
        if writer is not None:
            writer.close()


async def poll_client(c: Client, port: int, path: str, cookie: str, period: float, gate) -> None:
    """GET the state every `period` (from a random phase) until it is final."""
    connection = None
    await asyncio.sleep(random.uniform(0, period))
    next_at = time.monotonic()
    seen = set()
    try:
        while not c.done:
            try:
                if connection is None:
                    reader, writer, c.status, headers = await _open(port, path, cookie, "*/*", gate)
                    connection = writer
                else:
                    connection.write(get_request(path, port, cookie))
                    c.status, headers = await asyncio.wait_for(read_head(reader), CONNECT_TIMEOUT)
                body = await asyncio.wait_for(read_body(reader, headers), CONNECT_TIMEOUT)
                now = time.time()
                c.requests += 1
                if c.status != 200:
                    c.error = f"HTTP {c.status}"
                else:
                    state = json.loads(body)
                    version = int(state["version"])
                    c.t_ready = c.t_ready or now
                    if version not in seen:
                        seen.add(version)
                        c.versions.append(version)
                        c.times.append(now)
                    c.done = state["status"] in FINAL
                if headers.get("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                c.error = type(exc).__name__
                if connection is not None:
                    connection.close()
                connection = None
            next_at += period
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    finally:
        c.ended = True
        if connection is not None:
            connection.close()


def _coverage(c: Client, expected: dict[int, float]) -> tuple[int, list[float]]:
    """Versions that arrived themselves, and each expected version's latency as state.

    Headway sends state, not events: a version skipped because a newer one came first is
    on screen once the newer one is. Its latency is the arrival of the first version at
    least as new, minus its own write time. Versions never covered are left out.
    """
    exact = {v for v in c.versions if v in expected}
    latencies = []
    arrivals = sorted(zip(c.versions, c.times, strict=True), key=lambda a: a[1])
    newest, i = 0, 0
    for version in sorted(expected):
        while newest < version and i < len(arrivals):
            newest = max(newest, arrivals[i][0])
            i += 1
        if newest < version:
            break
        latencies.append((arrivals[i - 1][1] - expected[version]) * 1000)
    return len(exact), latencies


def summarize(clients: list[Client], writes: dict[str, dict[str, float]]) -> dict:
    """Connections, deliveries and update-to-client latency, against the recorded writes."""
    latencies: list[float] = []
    updates: list[float] = []  # the same, split: every version but the final state
    finals: list[float] = []  # the final states alone
    expected_total = delivered_total = 0
    errors: dict[str, int] = {}
    # Only versions written once all of their job's clients were connected count: while
    # thousands connect, the machine is busy with that, and the floor's writer sends no
    # versions then (only pings), so counting Headway's would compare it on other terms.
    all_ready: dict[int, float] = {}
    for c in clients:
        if c.t_ready:
            all_ready[c.job] = max(all_ready.get(c.job, 0.0), c.t_ready)
    # Spread: first to last receipt of each version, among the clients that received it.
    arrivals: dict[tuple, list[float]] = {}  # (job, version) -> when each client got it
    for c in clients:
        written = writes.get(str(c.job), {})
        for version, at in zip(c.versions, c.times, strict=True):
            if written.get(str(version), 0.0) >= all_ready[c.job]:
                arrivals.setdefault((c.job, version), []).append(at)
    spreads = [(max(t) - min(t)) * 1000 for t in arrivals.values() if len(t) > 1]
    for c in clients:
        if c.error and not c.done:
            errors[c.error] = errors.get(c.error, 0) + 1
        if not c.t_ready:
            continue
        written = writes.get(str(c.job), {})
        expected = {int(v): t for v, t in written.items() if t >= all_ready[c.job]}
        exact, covered = _coverage(c, expected)
        expected_total += len(expected)
        delivered_total += exact
        latencies += covered
        # `covered` follows the versions in order: the job's final state is the last version
        final = max((int(v) for v in written), default=0)
        for version, latency in zip(sorted(expected), covered, strict=False):
            (finals if version == final else updates).append(latency)
    return {
        "type": "result",
        "clients": len(clients),
        "connected": sum(1 for c in clients if c.t_ready),
        "done": sum(1 for c in clients if c.done),
        "errors": errors,
        "expected": expected_total,
        "delivered": delivered_total,
        "latency_ms": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies, default=float("nan")),
            "updates_p99": percentile(updates, 99),
            "finals_p99": percentile(finals, 99),
        },
        "spread_ms": {"p50": percentile(spreads, 50), "p99": percentile(spreads, 99)},
        "messages": sum(len(c.versions) for c in clients),
        "requests": sum(c.requests for c in clients),
    }


def _status(clients: list[Client]) -> str:
    return json.dumps(
        {
            "type": "status",
            "ready": sum(1 for c in clients if c.t_ready),
            "done": sum(1 for c in clients if c.done),
            "failed": sum(1 for c in clients if c.error and not c.t_ready),
            "open": sum(1 for c in clients if c.t_ready and not c.ended),
        }
    )


async def watch(args) -> None:
    """sse or poll mode: run until told to stop, then summarize."""
    gate = asyncio.Semaphore(IN_FLIGHT)
    clients = [Client(i % len(args.paths)) for i in range(args.clients)]
    tasks = []
    for i, c in enumerate(clients):
        path = args.paths[c.job]
        if args.mode == "sse":
            tasks.append(asyncio.create_task(sse_client(c, args.port, path, args.cookie, gate)))
        else:
            coroutine = poll_client(c, args.port, path, args.cookie, args.period, gate)
            tasks.append(asyncio.create_task(coroutine))
        if i % 100 == 99:
            await asyncio.sleep(0)  # let the first ones connect while the rest are created
    loop = asyncio.get_running_loop()
    command = asyncio.ensure_future(loop.run_in_executor(None, sys.stdin.readline))
    frozen = False
    while not command.done():
        if not frozen and all(c.t_ready or c.error for c in clients):
            # Everyone is connected (and told so by the status line after this): what this
            # process holds now lives until the end. Out of the garbage collector's sight,
            # a full collection no longer walks it: with 10,000 clients one took 90-170 ms
            # here, and every client stopped reading meanwhile, whichever server it was.
            gc.collect()
            gc.freeze()
            frozen = True
        print(_status(clients), flush=True)
        await asyncio.wait({command}, timeout=0.5)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    _, _, writes_path = command.result().strip().partition(" ")
    with open(writes_path) as f:
        writes = json.load(f)
    print(json.dumps(summarize(clients, writes)), flush=True)


async def hammer(args) -> None:
    """Closed loop: each connection sends its next request as soon as the last one answered."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + args.duration

    async def one(path: str) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
        request = get_request(path, args.port, args.cookie)
        try:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                writer.write(request)
                status, headers = await read_head(reader)
                await read_body(reader, headers)
                latencies.append((time.monotonic() - t0) * 1000)
                errors += status != 200
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one(args.paths[i % len(args.paths)]) for i in range(args.clients)))
    elapsed = time.monotonic() - started
    result = {
        "type": "result",
        "requests": len(latencies),
        "errors": errors,
        "rps": len(latencies) / elapsed,
        "latency_ms": {"p50": percentile(latencies, 50), "p99": percentile(latencies, 99)},
    }
    print(json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=("sse", "poll", "hammer"), required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--paths", nargs="+", required=True)
    parser.add_argument("--cookie", default="")
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args()
    raise_file_limit()
    asyncio.run(hammer(args) if args.mode == "hammer" else watch(args))


if __name__ == "__main__":
    main()
