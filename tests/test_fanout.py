"""The fan-out under real gunicorn + gevent (headway/web/fanout.py): streams that wait get
each change written straight to their sockets, framed exactly as the server frames what a
response yields; a reader that stalls skips to the newest state and holds up no one."""

from __future__ import annotations

import collections
import http.client
import math
import socket
import threading
import time

import pytest
import requests
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from jobs.reporter import ProgressReporter

from .conftest import wait_for

SECRET = "fanout-test-secret"
OWNER = "owner-fanout"


@pytest.fixture(scope="module")
def server(live_servers):
    return live_servers(SECRET_KEY=SECRET)


def owner_cookie(owner: str) -> str:
    app = Flask(__name__)
    app.secret_key = SECRET
    signed = SecureCookieSessionInterface().get_signing_serializer(app).dumps({"owner": owner})
    return f"session={signed}"


class Reader(threading.Thread):
    """One SSE client over HTTP/1.1 (so chunked): every message's (event, id, first line)."""

    def __init__(self, port: int, path: str, receive_buffer: int | None = None):
        super().__init__(daemon=True)
        self.messages: list[tuple[str, str, str]] = []
        self.reading = threading.Event()
        self.closing = False
        self.keepalives: list[float] = []  # when each keepalive comment arrived
        self.done_at = self.ended_at = math.inf  # when `done` came, when the stream ended
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        if receive_buffer:  # set before connecting, so the window stays small
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            sock.settimeout(60)
            sock.connect(("127.0.0.1", port))
            self.conn.sock = sock
        self.conn.request("GET", path, headers={"Cookie": owner_cookie(OWNER)})
        self.sock = self.conn.sock  # the response takes it: a stream's connection ends with it
        self.response = self.conn.getresponse()
        self.connected_at = time.monotonic()
        assert self.response.status == 200
        assert self.response.getheader("Transfer-Encoding") == "chunked"

    def run(self) -> None:
        self.reading.wait()
        event, event_id, data = "message", "", []
        try:
            for raw in iter(self.response.readline, b""):
                line = raw.decode().rstrip("\n")
                if line == "":
                    if data:
                        self.messages.append((event, event_id, data[0]))
                        if event == "done":
                            self.done_at = time.monotonic()
                    event, event_id, data = "message", "", []
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    event_id = line[4:]
                elif line.startswith("data: "):
                    data.append(line[6:])
                elif line.startswith(": keepalive"):
                    self.keepalives.append(time.monotonic())
        except (OSError, http.client.HTTPException):
            if not self.closing:
                raise
        finally:
            self.ended_at = time.monotonic()
            self.response.close()
            self.conn.close()

    def close(self) -> None:
        """End a stream that does not end by itself (`/live`)."""
        self.closing = True
        self.sock.shutdown(socket.SHUT_RDWR)
        self.join(10)

    def versions(self, event: str) -> list[int]:
        return [int(i) for e, i, _ in self.messages if e == event]


def items_job(store, items: int) -> tuple[str, ProgressReporter]:
    job_id = store.create(kind="steps", owner=OWNER, title="t", stages=["Working"])
    reporter = ProgressReporter(store, job_id, interval=math.inf, max_items=items)
    reporter.flush(status="running", started_at=time.time())
    reporter.stage("Working", total=items)
    for i in range(items):
        reporter.item(i, f"item-{i:03}.dat", 0, "pending")
    reporter.flush()
    return job_id, reporter


def view_reader(app, job_id: str):
    """A stream's render context for `job_id`, and a function that reads the process's view
    of the job as it is now (as the fan-out would, in that context)."""
    from headway.web import services
    from headway.web.streams import _request_context

    with app.test_request_context(f"/jobs/{job_id}/events"):
        context = _request_context()
        views = services().views

    def read():
        return views.get([job_id], time.monotonic(), context)[job_id]

    return context, read


def contexts_entered(monkeypatch) -> list[str]:
    """The thread of each stream render context entered from now on (a list that grows)."""
    from headway.web import streams

    entered, push = [], streams._Rerouted.push
    monkeypatch.setattr(
        streams._Rerouted,
        "push",
        lambda self: entered.append(threading.current_thread().name) or push(self),
    )
    return entered


def wait_until_watched(reader_count: int, readers: list[Reader]) -> None:
    for reader in readers:
        reader.reading.set()
    deadline = time.monotonic() + 30
    while sum(bool(r.messages) for r in readers) < reader_count:
        assert time.monotonic() < deadline, "the streams did not start"
        time.sleep(0.05)
    time.sleep(0.3)  # every stream is waiting for the next change


@pytest.mark.timeout(120)
def test_waiting_streams_get_every_change_as_the_server_would_frame_it(server, store):
    job_id, reporter = items_job(store, 10)
    version = store.get(job_id).version
    job_streams = [Reader(server.port, f"/jobs/{job_id}/events") for _ in range(8)]
    live_streams = [Reader(server.port, f"/live?job={job_id}:{version}") for _ in range(4)]
    readers = job_streams + live_streams
    for reader in readers:
        reader.start()
    job_streams_have_whole = 8  # a /live stream that has the version gets nothing at first
    wait_until_watched(job_streams_have_whole, job_streams)
    for reader in live_streams:
        reader.reading.set()

    written = []
    for i in range(10):
        reporter.item(i, f"item-{i:03}.dat", 100, "done")
        reporter.log(f"item-{i:03}.dat done")
        reporter.advance(current=f"item-{i:03}.dat")
        reporter.flush()
        written.append(store.get(job_id).version)
        time.sleep(0.15)  # the streams wait again before the next one
        if i == 0:  # every stream has begun, and read the job once, as each must
            deadline = time.monotonic() + 30
            while not all(len(r.messages) == 1 + (r in job_streams) for r in readers):
                assert time.monotonic() < deadline, "the first change did not reach them all"
                time.sleep(0.05)
            store.client.config_resetstat()
    reporter.flush(status="succeeded", finished_at=time.time())
    final = store.get(job_id).version
    for reader in job_streams:
        reader.join(30)
        assert not reader.is_alive(), "the stream did not end with the final state"
    # The web process applied each later change as its notice carried it: no read (a
    # read of a change that has log lines asks for them with LRANGE).
    assert "cmdstat_lrange" not in store.client.info("commandstats")
    for reader in job_streams:
        # Every version as a change from the one before, the final state too, then done.
        assert reader.versions("delta") == [*written, final]
        assert reader.versions("done") == [final]
    deadline = time.monotonic() + 30
    for reader in live_streams:
        while len(reader.messages) < len(written) + 1:
            assert time.monotonic() < deadline, reader.messages
            time.sleep(0.05)
        heads = [data.split(" ") for _, _, data in reader.messages]
        assert [(h[0], int(h[1])) for h in heads] == [(job_id, v) for v in [*written, final]]
        # each a change from the version before, the last one final
        assert [h[3] for h in heads] == [str(v - 1) for v in [*written, final]]
        assert [h[2] for h in heads] == ["0"] * len(written) + ["1"]
        reader.close()
    # The web process timed its fan-out of each of those changes (notice to last write).
    fanout = requests.get(f"{server.url}/healthz", timeout=10).json()["fanout"]
    assert fanout["changes"] >= len(written) and 0 < fanout["p50_ms"] <= fanout["max_ms"]


@pytest.mark.timeout(60)
def test_streams_that_join_a_job_that_has_not_changed_since_it_was_read_do_not_read_it(
    live_servers, store
):
    # Each used to read the job twice: once to check it is the visitor's, once for its first
    # state, that one under a lock the fan-out takes for every change. Of 10,000 streams
    # arriving together, 9,960 queued for it, the longest for 11-15 s.
    # (Limits off: a stream's slot is taken with an HGETALL of its set.)
    server = live_servers(SECRET_KEY=SECRET, HEADWAY_RATE_LIMITS="off")
    job_id, reporter = items_job(store, 10)
    first = Reader(server.port, f"/jobs/{job_id}/events")
    first.start()
    wait_until_watched(1, [first])  # the process has read the job
    store.client.config_resetstat()
    joining = [Reader(server.port, f"/jobs/{job_id}/events") for _ in range(5)]
    for reader in joining:
        reader.start()
    wait_until_watched(len(joining), joining)
    # The job's record is read with HGETALL, also by the read script (commandstats counts
    # what scripts call).
    assert "cmdstat_hgetall" not in store.client.info("commandstats")
    assert {r.messages[0][:2] for r in joining} == {first.messages[0][:2]}  # its whole state
    reporter.flush(status="succeeded", finished_at=time.time())
    final = store.get(job_id).version
    for reader in [first, *joining]:
        reader.join(30)
        assert reader.versions("done") == [final]


@pytest.mark.timeout(180)
def test_a_stalled_reader_skips_to_the_newest_state_and_holds_up_no_one(server, store):
    items = 300
    job_id, reporter = items_job(store, items)
    stalled = Reader(server.port, f"/jobs/{job_id}/events", receive_buffer=4096)
    prompt = [Reader(server.port, f"/jobs/{job_id}/events") for _ in range(3)]
    for reader in [stalled, *prompt]:
        reader.start()
    wait_until_watched(len(prompt), prompt)

    written = []
    steps = 100  # each change moves every bar: about 80 KB a message, more than the
    for step in range(1, steps + 1):  # socket buffers on both sides hold (4 MB + 8 KB)
        for i in range(items):
            reporter.item(i, f"item-{i:03}.dat", step * 100 / (steps + 1), "running")
        reporter.advance(current=f"step {step}")
        reporter.flush()
        written.append(store.get(job_id).version)
        time.sleep(0.02)
    for reader in prompt:  # the others are not held up by the one that reads nothing
        deadline = time.monotonic() + 30
        while reader.versions("delta")[-1:] != written[-1:]:
            assert time.monotonic() < deadline, "a prompt reader fell behind"
            time.sleep(0.05)
        assert reader.versions("delta") == written

    reporter.flush(status="succeeded", finished_at=time.time())
    final = store.get(job_id).version
    stalled.reading.set()  # it reads at last: a well-framed stream that skipped ahead
    stalled.join(60)
    assert not stalled.is_alive()
    versions = [int(i) for _, i, _ in stalled.messages]
    assert versions == sorted(versions) and versions[-1] == final
    assert stalled.messages[-1][0] == "done"
    assert len(versions) < len(written), "it skipped nothing"
    for reader in prompt:
        reader.join(30)
        assert reader.versions("done") == [final]


@pytest.mark.timeout(120)
def test_a_stream_the_fanout_feeds_is_not_idle_and_gets_no_keepalives(live_servers, store):
    server = live_servers(SECRET_KEY=SECRET, HEADWAY_KEEPALIVE_SECONDS="1")
    job_id, reporter = items_job(store, 3)
    reader = Reader(server.port, f"/jobs/{job_id}/events")
    reader.start()
    wait_until_watched(1, [reader])
    feeding = time.monotonic()
    # A change every 0.1 s for 3 s. A waiting stream gets a keepalive once its quiet spell
    # (half the interval to all of it: 0.5-1 s here), less the fan-out's look-ahead
    # (LOOK_AHEAD, 0.25 s), has gone by with no write: changes 0.25 s apart, plus the time
    # each takes to arrive, let one through now and then.
    for step in range(30):
        reporter.set(done=step, total=30)
        reporter.flush()
        time.sleep(0.1)
    fed = time.monotonic()
    time.sleep(2.5)  # then silence: keepalives again, one a second
    assert len(reader.versions("delta")) == 30
    assert not [t for t in reader.keepalives if feeding < t < fed], reader.keepalives
    assert [t for t in reader.keepalives if t > fed + 0.5], "no keepalive once quiet"
    reader.close()


@pytest.mark.timeout(120)
def test_a_streams_connection_ends_with_it_and_other_requests_keep_theirs(server, store):
    # Keeping a finished stream's connection for a next request that does not come cost
    # gunicorn two more wake-ups per stream, and thousands of streams end at once.
    job_id, reporter = items_job(store, 3)
    reporter.flush(status="succeeded", finished_at=time.time())
    cookie = owner_cookie(OWNER)
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(
            f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk: the stream ended
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
        assert b"\r\nConnection: close\r\n" in received.split(b"\r\n\r\n")[0]
        assert b"event: done" in received
        assert sock.recv(1) == b""  # closed by the server, long before its keepalive of 5 s
    live = requests.get(
        f"{server.url}/live?job={job_id}", headers={"Cookie": cookie}, stream=True, timeout=10
    )
    assert live.headers["Connection"] == "close"
    live.close()
    page = requests.get(f"{server.url}/jobs/{job_id}", headers={"Cookie": cookie}, timeout=10)
    assert page.status_code == 200 and page.headers["Connection"] == "keep-alive"


@pytest.mark.timeout(120)
def test_a_process_renews_the_slots_of_the_streams_it_feeds(live_servers, store):
    # Fed by the fan-out, a stream never wakes by itself; its process renews its slots.
    from headway.limits import HOLDERS, Holder, held

    # A server of its own: the module's may still give back the slots of earlier tests'
    # streams (noticed closed at their next keepalive), taken before the suite's Redis was
    # flushed for this test, from the count of the slots it takes here.
    server = live_servers(SECRET_KEY=SECRET, HEADWAY_STREAM_MAX_SECONDS="601")
    job_id, reporter = items_job(store, 3)
    readers = [Reader(server.port, f"/jobs/{job_id}/events") for _ in range(3)]
    for reader in readers:
        reader.start()
    wait_until_watched(len(readers), readers)
    slots = f"hw:streams:{OWNER}"
    (holder,) = store.client.hkeys(slots)  # the server's process
    taken = store.client.zscore(HOLDERS, holder)
    assert held(store.client, slots) == 3
    for step in range(int(Holder.RENEW_EVERY * 4) + 8):  # a change every 0.25 s, past a renewal
        reporter.set(done=step, total=100)
        reporter.flush()
        time.sleep(0.25)
    renewed = store.client.zscore(HOLDERS, holder)
    assert held(store.client, slots) == 3
    for reader in readers:
        reader.close()
    assert renewed > taken, "the process never renewed its slots"
    reporter.flush(status="succeeded", finished_at=time.time())  # the streams end
    wait_for(lambda: held(store.client, slots) == 0, timeout=10)  # and give their slots back


@pytest.mark.timeout(120)
def test_streams_that_connected_together_get_keepalives_at_moments_of_their_own(
    live_servers, store
):
    # Streams that connected together and waited together would wake together, one
    # keepalive interval later and every interval after: with ten thousand, that held up
    # every change for a tenth of a second. Each keepalive falls due after a quiet spell
    # drawn for its stream, between half the interval and all of it, and is sent when the
    # fan-out looks at the slot it falls in: `LOOK_AHEAD` early at most.
    from headway.web.fanout import LOOK_AHEAD

    server = live_servers(SECRET_KEY=SECRET, HEADWAY_KEEPALIVE_SECONDS="2")
    job_id, _ = items_job(store, 3)
    readers = [Reader(server.port, f"/jobs/{job_id}/events") for _ in range(16)]
    for reader in readers:
        reader.start()
    wait_until_watched(len(readers), readers)
    time.sleep(max(0.0, readers[-1].connected_at + 2.5 - time.monotonic()))
    quiet = sorted(r.keepalives[0] - r.connected_at for r in readers if r.keepalives)
    for reader in readers:
        reader.close()
    assert len(quiet) == len(readers), "a stream got no keepalive in a whole interval"
    assert quiet[0] > 1.0 - LOOK_AHEAD and quiet[-1] < 2.2, quiet
    assert quiet[-1] - quiet[0] > 0.4, quiet  # without the draw: all within ms of 2 s


@pytest.mark.timeout(120)
def test_streams_that_got_their_final_state_end_when_many_jobs_end_at_once(live_servers, store):
    # The fan-out writes each final state and wakes its streams to end `END_GRACE` later,
    # once it has no change left to write: a client that closes on `done` closes first. A
    # keepalive (here ten minutes away) must not be what ends them.
    from headway.web.fanout import END_GRACE

    server = live_servers(
        SECRET_KEY=SECRET, HEADWAY_KEEPALIVE_SECONDS="600", HEADWAY_RATE_LIMITS="off"
    )
    jobs = [items_job(store, 3) for _ in range(4)]
    readers = [
        Reader(server.port, f"/jobs/{job_id}/events") for job_id, _ in jobs for _ in range(6)
    ]
    for reader in readers:
        reader.start()
    wait_until_watched(len(readers), readers)
    for _, reporter in jobs:
        reporter.flush(status="succeeded", finished_at=time.time())
    finals = [store.get(job_id).version for job_id, _ in jobs]
    for i, reader in enumerate(readers):
        reader.join(30)
        assert not reader.is_alive(), "the stream did not end after its final state"
        assert reader.versions("done") == [finals[i // 6]]
        assert reader.ended_at - reader.done_at >= END_GRACE / 2 > 0, "ended without a grace"


def test_a_waiting_stream_behind_the_changes_base_gets_the_change_from_its_own_version(app, store):
    """Versions can go by between two of the fan-out's writes to a stream (read for others
    meanwhile): the stream then gets, straight to its socket and without being woken, the
    change from the version it has; a stream whose version the process never read gets the
    whole state. Each message is made once, whatever the number of streams that need it."""
    from headway.web.fanout import Change, Sink
    from headway.web.streams import stream_framing

    job_id, reporter = items_job(store, 10)
    context, read = view_reader(app, job_id)
    have = read()
    for index in (2, 5):
        reporter.item(index, f"item-{index:03}.dat", 100, "done")
        reporter.flush()
        newest = read()
    assert newest.base == have.version + 1 and newest.version == have.version + 2

    pairs: list[socket.socket] = []

    def sink_at(version: int | None) -> tuple[Sink, socket.socket]:
        ours, theirs = socket.socketpair()
        pairs.extend((ours, theirs))
        ours.setblocking(False)
        sent = {job_id: version}
        return Sink(ours, True, stream_framing, sent, context, 10.0), theirs

    def received(theirs: socket.socket) -> dict[str, str]:
        size, _, rest = theirs.recv(1 << 20).partition(b"\r\n")
        assert len(rest) == int(size, 16) + 2 and rest.endswith(b"\r\n")  # one whole chunk
        fields = (line.split(": ", 1) for line in rest.decode().strip().split("\n"))
        return {field: value for field, value in fields}

    change = Change(newest)
    try:
        for sink, theirs in [sink_at(have.version) for _ in range(3)]:
            assert sink.write(change, have.version, time.monotonic())
            assert sink.sent[job_id] == newest.version
            message = received(theirs)
            assert message["event"] == "delta" and message["id"] == str(newest.version)
            assert message["data"].count('class="item ') == 2
            assert 'id="job-item-2"' in message["data"] and 'id="job-item-5"' in message["data"]
        unknown, theirs = sink_at(have.version - 1)
        assert unknown.write(change, have.version - 1, time.monotonic())
        whole = received(theirs)
        assert whole["event"] == "progress" and whole["data"].count('class="item ') == 10
        assert len(change.frames) == 2  # one change from `have`, one whole state, for four streams
    finally:
        for sock in pairs:
            sock.close()


def test_a_stream_gets_nothing_after_its_final_state(app, store):
    """A finished job takes one more write, the link to its retry. A stream that got the
    final state (and `done`) but was not yet woken to end is not written that version: the
    fan-out leaves it to the stream, which ends."""
    from headway.web.fanout import Change, Sink
    from headway.web.streams import stream_framing

    job_id, reporter = items_job(store, 3)
    context, read = view_reader(app, job_id)
    have = read()
    reporter.flush(status="failed", finished_at=time.time(), error="boom")
    final = read()
    assert store.update(job_id, {"retried_as": "f" * 32}).ok
    linked = read()
    assert linked.version == final.version + 1 and linked.state.retried_as

    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        theirs.settimeout(5)
        sink = Sink(ours, True, stream_framing, {job_id: have.version}, context, 10.0)
        sink.ends = True
        assert sink.write(Change(final), have.version, time.monotonic()) and sink.ended
        written = theirs.recv(1 << 20).decode()
        assert written.endswith(f"id: {final.version}\nevent: done\ndata: failed\n\n\r\n")
        assert not sink.write(Change(linked), final.version, time.monotonic())
        assert sink.sent[job_id] == final.version
        theirs.setblocking(False)
        with pytest.raises(BlockingIOError):
            theirs.recv(1 << 20)  # nothing came after `done`
    finally:
        ours.close()
        theirs.close()


def test_a_change_is_written_as_its_notice_comes_unless_one_is_being_written(
    app, store, monkeypatch
):
    """The hub hands a change to the fan-out and it is written there and then, in the
    hub's thread (no hand-over to another greenlet first). While another change is being
    written, it waits, and the fan-out's own thread writes it right after. Each thread
    enters a request context to render in once, and keeps it."""
    from headway.hub import Watcher
    from headway.web import services
    from headway.web.fanout import Fanout, Sink
    from headway.web.streams import stream_framing

    entered = contexts_entered(monkeypatch)

    job_id, reporter = items_job(store, 3)
    context, read = view_reader(app, job_id)
    with app.app_context():
        fanout = Fanout(services().views)
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        theirs.setblocking(False)
        sink = Sink(ours, True, stream_framing, {job_id: read().version}, context, 10.0)
        writers = []  # the thread of each write
        write = sink.write
        sink.write = lambda *args: writers.append(threading.current_thread().name) or write(*args)
        watcher = Watcher([job_id], sink=sink)
        watcher.parked = True

        def hub() -> None:  # as the hub's thread does: a new version, then its notice
            reporter.item(1, "item-001.dat", 50 + len(writers))
            reporter.flush()
            fanout(job_id, [watcher], time.monotonic())

        thread = threading.Thread(target=hub, name="hub")
        thread.start()
        thread.join(10)
        assert b"event: delta" in theirs.recv(1 << 16)  # written before the hub went on
        assert writers == ["hub"] and sink.sent[job_id] == read().version

        with fanout._turn:  # a change is being written: the next waits for it
            thread = threading.Thread(target=hub, name="hub")
            thread.start()
            thread.join(10)
            with pytest.raises(BlockingIOError):
                theirs.recv(1 << 16)
        theirs.settimeout(10)
        assert b"event: delta" in theirs.recv(1 << 16)
        # (the fan-out's thread notes the version sent after the write, then lets go)
        wait_for(lambda: sink.sent[job_id] == read().version and not fanout._turn.locked())
        assert writers == ["hub", "fanout"]

        theirs.setblocking(False)
        thread = threading.Thread(target=lambda: [hub() for _ in range(3)], name="hub")
        thread.start()
        thread.join(10)
        assert b"event: delta" in theirs.recv(1 << 16)
        assert writers == ["hub", "fanout", "hub", "hub", "hub"]
        assert [name for name in entered if name != "MainThread"] == ["hub", "fanout", "hub"]
    finally:
        ours.close()
        theirs.close()


def test_a_look_after_the_waiting_streams_takes_a_few_at_a_time():
    """Streams kept for their keepalives are looked at `LOOKED` at a time, and woken `KEPT`
    at a time, so that changes noticed meanwhile are written between batches. One written
    to since it was kept is kept on, in the slot of a quiet spell after that write."""
    from headway.hub import Watcher
    from headway.web.fanout import KEPT, LOOK_AHEAD, LOOKED, Fanout, Sink
    from headway.web.streams import stream_framing

    pairs = []

    def kept(fanout: Fanout, count: int, written: bool) -> list[Watcher]:
        watchers = []
        for _ in range(count):
            ours, theirs = socket.socketpair()
            pairs.extend([ours, theirs])
            sink = Sink(ours, True, stream_framing, {}, None, 8.0)
            sink.since = time.monotonic() - 16.0  # its keepalive fell due a while ago ...
            due = sink.keepalive_at()
            if written:
                sink.written_at = time.monotonic()  # ... but it was written to just now
            watcher = Watcher(["job"], sink=sink)
            watcher.parked = sink.kept = True
            watchers.append(watcher)
            fanout._keep_at(watcher, due)  # as `Fanout.keep` does, without its thread
        return watchers

    def overdue(fanout: Fanout) -> int:  # kept in a slot that has begun
        now = time.monotonic()
        return sum(len(kept) for slot, kept in fanout._kept.items() if slot * LOOK_AHEAD <= now)

    def held(fanout: Fanout) -> int:
        return sum(len(kept) for kept in fanout._kept.values())

    try:
        fanout = Fanout(views=None)
        watchers = kept(fanout, LOOKED + 50, written=True)
        fanout._look_after()
        assert overdue(fanout) == 50 and held(fanout) == len(watchers)
        fanout._look_after()
        assert overdue(fanout) == 0 and held(fanout) == len(watchers)
        assert not any(w._event.is_set() for w in watchers)  # none woken

        fanout = Fanout(views=None)
        watchers = kept(fanout, KEPT + 10, written=False)
        fanout._look_after()
        assert sum(w._event.is_set() for w in watchers) == KEPT
        fanout._look_after()
        assert all(w._event.is_set() and not w.sink.kept for w in watchers)
        assert not fanout._kept and not fanout._slots
    finally:
        for sock in pairs:
            sock.close()


def test_a_look_after_the_waiting_streams_takes_those_due_shortly_too():
    """A look takes every stream of a slot that has begun: it wakes those whose keepalive
    falls due before the slot ends (`LOOK_AHEAD` from now at most), so that the fan-out
    looks a few times a second rather than once for each stream; it leaves those due later
    for a later look."""
    from headway.hub import Watcher
    from headway.web.fanout import LOOK_AHEAD, Fanout, Sink
    from headway.web.streams import stream_framing

    fanout, pairs, watchers = Fanout(views=None), [], []
    slot_ends = (math.floor(time.monotonic() / LOOK_AHEAD) + 1) * LOOK_AHEAD
    try:
        for due in (slot_ends - 0.001, slot_ends - 0.001, slot_ends + 40 * LOOK_AHEAD):
            ours, theirs = socket.socketpair()
            pairs += [ours, theirs]
            sink = Sink(ours, True, stream_framing, {}, None, 8.0)
            sink.since = due - sink.quiet
            watcher = Watcher(["job"], sink=sink)
            watcher.parked = sink.kept = True
            watchers.append(watcher)
            fanout._keep_at(watcher, sink.keepalive_at())
        assert not watchers[0]._event.is_set()
        fanout._look_after()
        assert [w._event.is_set() for w in watchers] == [True, True, False]
        assert list(fanout._kept.values()) == [collections.deque([watchers[2]])]
    finally:
        for sock in pairs:
            sock.close()


def test_a_turn_of_the_fanout_renders_every_change_in_one_request_context(app, store, monkeypatch):
    """The fan-out's renders are the same for every watcher: a turn enters one context (a
    stream's) for all the jobs it reads, renders and writes, not one per job and change."""
    from headway.hub import Watcher
    from headway.web import services
    from headway.web.fanout import Fanout, Sink
    from headway.web.streams import _request_context, stream_framing

    jobs = [items_job(store, 3) for _ in range(3)]
    with app.test_request_context(f"/jobs/{jobs[0][0]}/events"):
        context = _request_context()
        views = services().views
    fanout = Fanout(views)
    have = views.get([job_id for job_id, _ in jobs], time.monotonic(), context)
    for _, reporter in jobs:
        reporter.item(1, "item-001.dat", 50)
        reporter.flush()
    entered = contexts_entered(monkeypatch)
    pairs, pending = [], {}
    try:
        for job_id, _ in jobs:
            ours, theirs = socket.socketpair()
            pairs += [ours, theirs]
            ours.setblocking(False)
            sink = Sink(ours, True, stream_framing, {job_id: have[job_id].version}, context, 10.0)
            watcher = Watcher([job_id], sink=sink)
            watcher.parked = True
            pending[job_id] = [watcher]
        now = {job_id: time.monotonic() for job_id in pending}
        fanout._send(pending, now, now)
        for theirs in pairs[1::2]:
            assert b"event: delta" in theirs.recv(1 << 16)  # each stream got its change
        assert len(entered) == 1
    finally:
        for sock in pairs:
            sock.close()


def test_a_worker_compiles_every_template_as_it_starts(monkeypatch):
    """gunicorn's post_worker_init compiles them all, so that no change the fan-out renders
    waits for a compile (up to 12.5 ms each), with every stream behind it."""
    import gc
    import runpy
    import types
    from pathlib import Path

    from app import create_app

    hooks = runpy.run_path(str(Path(__file__).parent.parent / "gunicorn.conf.py"))
    app = create_app({"TESTING": True})
    env = app.jinja_env

    def compiled() -> set[str]:  # the names in Jinja's cache of compiled templates
        return {name for _, name in env.cache}

    assert not compiled() >= set(env.list_templates())
    monkeypatch.setattr(gc, "freeze", lambda: None)  # not this test process's objects
    monkeypatch.setattr(gc, "callbacks", [])
    hooks["post_worker_init"](types.SimpleNamespace(wsgi=app))
    assert compiled() >= set(env.list_templates())
