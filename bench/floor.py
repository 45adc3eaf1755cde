"""The floor: the least any server can do to fan a message out to its streams.

    python -m bench.floor --port P --redis URL

A gevent server that answers every GET with event-stream headers and keeps the socket, and
one greenlet per job channel that writes each message published on it, already framed as
SSE by the writer, straight to every socket watching that job: no WSGI, no per-stream
greenlet wake-up, no reads, no rendering. What Headway's fan-out costs above this on the
same machine is Headway's own; what this costs is the machine's (and the load generator's).

`GET /timing` answers what it measured of its own fan-out, as Headway's `/healthz` does: the
time from taking each message off the subscription to its last write (p99 of the latest
1,000, in ms; a message that arrives while another is being written waits uncounted).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\r\n"
CHANNEL_PREFIX = "floor:"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    watchers: dict[str, set] = collections.defaultdict(set)
    times: collections.deque[float] = collections.deque(maxlen=1000)

    def handle(sock, address) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = sock.recv(4096)
            if not chunk:
                return
            request += chunk
        path = request.split(b" ", 2)[1].decode()
        if path == "/timing":
            ordered = sorted(times)
            at = min(len(ordered) - 1, int(0.99 * len(ordered)))  # as Headway's /healthz
            p99 = round(1000 * ordered[at], 2) if ordered else None
            body = json.dumps({"changes": len(ordered), "p99_ms": p99}).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        if not path.startswith("/stream/"):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        job = path.removeprefix("/stream/")
        sock.sendall(HEAD + b"retry: 1000\n\n")
        watchers[job].add(sock)
        try:
            while sock.recv(4096):
                pass
        except OSError:
            pass
        finally:
            watchers[job].discard(sock)

    def broadcast() -> None:
        client = redis.Redis.from_url(args.redis)
        pubsub = client.pubsub()
        pubsub.psubscribe(CHANNEL_PREFIX + "*")
        for message in pubsub.listen():
            if message["type"] != "pmessage":
                continue
            arrived = time.monotonic()
            job = message["channel"].decode().removeprefix(CHANNEL_PREFIX)
            data = message["data"]
            socks = list(watchers.get(job, ()))
            for sock in socks:
                try:
                    sock.sendall(data)
                except OSError:
                    watchers[job].discard(sock)
            if socks and data.startswith(b"id:"):  # a version, not a ping
                times.append(time.monotonic() - arrived)

    gevent.spawn(broadcast)
    StreamServer(("127.0.0.1", args.port), handle, backlog=4096).serve_forever()


if __name__ == "__main__":
    main()
