"""The web process never blocks, against real gunicorn + gevent processes: hostile uploads
while another client polls /healthz and watches a stream, bodies that cross a limit while
they stream (chunked or not), a body that trickles, cookie-less floods, a Retry race."""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from .browser_support import JOB_URL, job_id_of
from .hostile import RawPost, Visitor, closing, many_entry_zip, part, quadratic_csvs

ENV = {
    "HEADWAY_CHECK_SECONDS": "2",
    "HEADWAY_UPLOAD_RATE_WINDOW": "2",
    "HEADWAY_KEEPALIVE_SECONDS": "120",
    "HEADWAY_UPLOADS_PER_ADDRESS": "8",  # the hostile test sends five at once
}


# What a client has sent when the server stops reading and closes: what the kernel buffers
# on both sides of a loopback socket took (several MB) and the 2 MB the server drains after
# a refusal. The bodies on offer are 200 MB.
FAR_FROM_ALL = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def server(live_servers):
    return live_servers(**ENV)


@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return quadratic_csvs(folder / "csv"), many_entry_zip(folder / "entries.xlsx")


def spool_files() -> list[str]:
    spool = Path(os.environ["HEADWAY_INSTANCE_PATH"]) / "uploads"
    return sorted(p.name for p in spool.iterdir()) if spool.exists() else []


def job_files() -> list[str]:
    jobs = Path(os.environ["HEADWAY_INSTANCE_PATH"]) / "jobs"
    return sorted(str(p) for p in jobs.rglob("*")) if jobs.exists() else []


def upload(visitor: Visitor, slug: str, files: list[Path], **fields) -> requests.Response:
    data = {"csrf_token": visitor.token, **fields}
    handles = [("files", (p.name, p.open("rb"))) for p in files]
    try:
        return visitor.session.post(
            f"{visitor.base}/jobs/new/{slug}",
            data=data,
            files=handles,
            allow_redirects=False,
            timeout=120,
        )
    finally:
        for _, (_, handle) in handles:
            handle.close()


def start_steps_job(base: str, steps: int, delay: float, fail_at: int = -1) -> tuple:
    visitor = Visitor(base)
    response = visitor.session.post(
        f"{base}/jobs/new/steps",
        files={"csrf_token": (None, visitor.token)},
        data={"steps": steps, "delay": delay, "fail_at": fail_at},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 303, response.text[:500]
    return visitor, job_id_of(response.headers["Location"])


def test_hostile_uploads_leave_healthz_and_streams_alone(server, hostile_files, store, tmp_path):
    csvs, entries = hostile_files
    spin = tmp_path / "spin.txt"  # slow whatever the shipped kinds' own guards become
    spin.write_text("spin 30")
    watcher, job_id = start_steps_job(server.url, steps=2000, delay=0.02)
    arrivals: list[float] = []
    latencies: list[float] = []
    done = threading.Event()

    def watch():
        with watcher.session.get(
            f"{server.url}/jobs/{job_id}/events", stream=True, timeout=60
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith(b"id:"):
                    arrivals.append(time.monotonic())
                if done.is_set():
                    return

    def poll():
        with requests.Session() as health:
            while not done.is_set():
                started = time.monotonic()
                health.get(f"{server.url}/healthz", timeout=30)
                latencies.append(time.monotonic() - started)
                time.sleep(0.05)

    def attack(files: list[Path]) -> requests.Response:
        slug = "slowcheck" if files == [spin] else "spreadsheet"
        return upload(Visitor(server.url, slug), slug, files)

    threads = [threading.Thread(target=watch), threading.Thread(target=poll)]
    for thread in threads:
        thread.start()
    time.sleep(1)
    began = time.monotonic()
    with ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(attack, [csvs, [entries], csvs, [entries], [spin]]))
    ended = time.monotonic()
    done.set()
    for thread in threads:
        thread.join(30)

    for answer in answers:
        # The checks ran, off the loop, and either finished or ran out of their budget.
        assert answer.status_code in (303, 400), answer.text[:300]
        if answer.status_code == 400:
            reason = re.search(r'id="form-error">([^<]*)<', answer.text)[1]
            assert (
                "could not be checked within 2 s" in reason
                or "too many for a workbook" in reason  # the spreadsheet kind's own guard
            ), reason
    assert "could not be checked within 2 s" in answers[-1].text
    assert ended - began > 2  # the hostile checks did take their time...
    assert max(latencies) < 1.0, sorted(latencies)[-5:]  # ...but not the loop's
    during = [t for t in arrivals if began <= t <= ended]
    gaps = [b - a for a, b in zip([began, *during], [*during, ended], strict=True)]
    assert during and max(gaps) < 1.0, (len(during), max(gaps))
    store.update(job_id, {"cancel_requested": True})


def multipart_pieces(boundary: str, token: str, file_bytes: int, piece: int = 65536):
    yield part(boundary, "csrf_token", token.encode())
    yield f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '.encode()
    yield b'filename="big.txt"\r\nContent-Type: text/plain\r\n\r\n'
    block = b"x" * (piece - 1) + b"\n"
    for _ in range(file_bytes // piece):
        yield block
    yield b"\r\n" + closing(boundary)


def raw_upload(server, visitor: Visitor, slug: str, pieces, boundary: str, **kwargs) -> RawPost:
    return RawPost(
        server.port,
        f"/jobs/new/{slug}",
        pieces,
        headers={
            "Cookie": visitor.cookie,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        **kwargs,
    )


@pytest.mark.parametrize("chunked", [True, False])
def test_a_body_over_the_kind_limit_is_stopped_where_it_crosses(server, chunked):
    visitor = Visitor(server.url, "lines")
    boundary = secrets.token_hex(8)
    if chunked:  # no declared length: 200 MB on offer
        pieces, length = multipart_pieces(boundary, visitor.token, 200 * 1024 * 1024), None
    else:  # declared within what the kind allows for the whole body; the files cross 1 MB
        pieces = list(multipart_pieces(boundary, visitor.token, 1_900_000))
        length = sum(len(p) for p in pieces)
    post = raw_upload(server, visitor, "lines", pieces, boundary, length=length, close=False)
    status, _, body = post.response()  # to the end: the server closes, never reads it all
    assert status == 413, body[:500]
    assert "The files add up to more than 1.0 MB, the most Count lines takes." in body
    assert post.sent < FAR_FROM_ALL  # the read stopped: far from 200 MB
    assert spool_files() == [] and job_files() == []


def test_a_wrong_csrf_token_is_refused_before_any_file_is_spooled(server):
    visitor = Visitor(server.url, "lines")
    boundary = secrets.token_hex(8)
    post = raw_upload(
        server,
        visitor,
        "lines",
        multipart_pieces(boundary, "forged-token", 200 * 1024 * 1024),
        boundary,
        close=False,
    )
    status, _, body = post.response()
    assert status == 400
    assert "Form expired or forged" in body
    assert post.sent < FAR_FROM_ALL
    assert spool_files() == [] and job_files() == []


def test_a_thousand_file_parts_are_refused_at_the_first_one_too_many(server):
    visitor = Visitor(server.url, "lines")
    boundary = secrets.token_hex(8)
    pieces = [part(boundary, "csrf_token", visitor.token.encode())]
    pieces += [part(boundary, "files", b"x\n", f"{i}.txt") for i in range(1000)]
    pieces.append(closing(boundary))
    body = b"".join(pieces)
    post = raw_upload(server, visitor, "lines", [body], boundary, length=len(body))
    status, _, text = post.response()
    assert status == 400
    assert "Too many files: more than 3 chosen, Count lines takes at most 3." in text
    assert spool_files() == [] and job_files() == []


def test_a_trickling_body_is_ended_with_408(server):
    visitor = Visitor(server.url, "lines")
    boundary = secrets.token_hex(8)
    head = part(boundary, "csrf_token", visitor.token.encode())
    head += f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '.encode()
    head += b'filename="slow.txt"\r\n\r\n'
    trickle = [head] + [b"x"] * 1000  # one byte every 0.2 s: 5 B/s
    started = time.monotonic()
    post = raw_upload(
        server,
        visitor,
        "lines",
        trickle,
        boundary,
        length=len(head) + 10_000,
        pause=0.2,
        close=False,
    )
    status, _, body = post.response(timeout=30)
    assert status == 408, body[:500]
    assert "The upload was too slow" in body
    assert time.monotonic() - started < 15
    assert spool_files() == [] and job_files() == []


def test_cookieless_stream_flood_meets_the_per_address_cap(server):
    """Each connection without a cookie is a new visitor; the address is the same."""
    sockets, statuses = [], []
    try:
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.sendall(b"GET /live?rows=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = sock.recv(4096).decode("latin-1")
            statuses.append(int(head.split()[1]))
            if statuses[-1] == 429:
                assert re.search(r"(?im)^retry-after: \d+", head)
            sockets.append(sock)
    finally:
        for sock in sockets:
            sock.close()
    assert statuses[:32] == [200] * 32
    assert set(statuses[32:]) == {429}


def test_concurrent_retries_make_exactly_one_new_attempt(server, store):
    visitor, job_id = start_steps_job(server.url, steps=3, delay=0, fail_at=0)
    deadline = time.monotonic() + 30
    while store.get(job_id).status != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    barrier = threading.Barrier(6)

    def click(_):
        barrier.wait()
        return visitor.session.post(
            f"{server.url}/jobs/{job_id}/retry",
            data={"csrf_token": visitor.token},
            allow_redirects=False,
            timeout=30,
        )

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(click, range(6)))
    assert [a.status_code for a in answers] == [303] * 6, [a.text[:200] for a in answers]
    targets = {a.headers["Location"] for a in answers}
    assert len(targets) == 1 and JOB_URL.search(targets.pop())
    owner_jobs = store.list_for_owner(store.get(job_id).owner)
    assert len(owner_jobs) == 2  # the failed job and one new attempt
    assert store.get(job_id).retried_as in {j.id for j in owner_jobs}


def test_a_declared_length_over_the_limit_is_answered_and_the_connection_closed(server):
    visitor = Visitor(server.url, "lines")
    boundary = secrets.token_hex(8)
    declared = 3 * 1024**3
    post = raw_upload(
        server,
        visitor,
        "lines",
        (b"x" * 1024 * 1024 for _ in range(3 * 1024)),
        boundary,
        length=declared,
        pause=0.01,
        close=False,  # a keep-alive connection: the server must choose to close it
    )
    # Read to the end of the connection: the server closes it instead of reading 3 GB.
    status, _, body = post.response(timeout=30)
    assert status == 413
    assert "The upload is larger than 1.0 MB, the most Count lines takes." in body
    assert post.sent < 200 * 1024 * 1024
    assert spool_files() == [] and job_files() == []
