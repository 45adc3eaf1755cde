"""Uploads: the web process's memory while it receives one 2 GB file.

The client streams a multipart body from a generator (1 MiB at a time, nothing on disk and
never the whole body in memory) after GETting the form for its session cookie, its CSRF
token and its other fields' defaults, as a browser would. The kind is `archive` when it
exists and takes any file that large; otherwise bench/upload_kind.py. No worker runs, so the
job stays queued; its files are deleted with the server's instance folder afterwards.
"""

from __future__ import annotations

import dataclasses
import html.parser
import http.client
import os
import secrets
import time

import requests

from bench.metrics import ProcessWatch, mb
from bench.servers import RedisServer, WebServer

CHUNK = 1024 * 1024
FALLBACK_KIND = "bench-upload"


@dataclasses.dataclass
class Transfer:
    """A file moved through the web process: what it was, its size, the answer, the time it
    took and the web process's memory before and at its peak."""

    what: str
    size_bytes: int
    status: int
    seconds: float
    rss_start_mb: float
    rss_peak_mb: float

    @property
    def growth_mb(self) -> float:
        return self.rss_peak_mb - self.rss_start_mb

    @property
    def mb_per_s(self) -> float:
        return mb(self.size_bytes) / self.seconds


@dataclasses.dataclass
class UploadResult(Transfer):
    """An upload (`what`: the job kind it was posted to)."""

    job_path: str = ""  # where the upload's answer sent the browser: /jobs/<id>
    cookie: str = ""  # the uploader's session, its owner's


class _FormFields(html.parser.HTMLParser):
    """What a browser would submit from the form besides files: each field's default value."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name") and a.get("type") not in ("file", "submit"):
            if a.get("type") not in ("checkbox", "radio") or "checked" in a:
                self.fields[a["name"]] = a.get("value") or ""
        elif tag == "select":
            self._select = a.get("name")
        elif tag == "option" and self._select:
            if self._select not in self.fields or "selected" in a:
                self.fields[self._select] = a.get("value") or ""
        elif tag == "textarea" and a.get("name"):
            self.fields[a["name"]] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def pick_kind(size: int) -> str:
    """`archive` if it takes any file of this size; otherwise the bench-only kind."""
    from jobs import kinds

    archive = kinds.registry().get("archive")
    if archive and archive.check_file is None and archive.max_total_bytes >= size:
        return "archive"
    return FALLBACK_KIND


def _body(fields: dict[str, str], size: int, boundary: str) -> tuple[int, object]:
    """The multipart body's length and a generator of its pieces."""
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    head = (
        head + f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="files"; filename="bench-upload.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = os.urandom(CHUNK)

    def pieces():
        yield head
        for offset in range(0, size, CHUNK):
            yield block[: min(CHUNK, size - offset)]
        yield tail

    return len(head) + size + len(tail), pieces()


def run_upload(
    bench_redis: RedisServer, size: int, env: dict[str, str] | None = None, name: str = "upload"
) -> UploadResult:
    """POST one `size`-byte file to a fresh web process and watch its RSS meanwhile."""
    bench_redis.client().flushall()
    kind = pick_kind(size)
    server = WebServer(
        f"headway-{name}",
        "app:create_app()",
        bench_redis.url,
        env={"HEADWAY_KIND_MODULES": "bench.upload_kind", **(env or {})},
    )
    try:
        browser = requests.Session()
        form = browser.get(f"{server.base}/jobs/new/{kind}", timeout=30)
        form.raise_for_status()
        parser = _FormFields()
        parser.feed(form.text)
        cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
        boundary = secrets.token_hex(16)
        length, pieces = _body(parser.fields, size, boundary)
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
        started = time.monotonic()
        with ProcessWatch(server.worker, interval=0.05) as watch:
            connection.putrequest("POST", f"/jobs/new/{kind}")
            connection.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            connection.putheader("Content-Length", str(length))
            connection.putheader("Cookie", cookie)
            connection.endheaders()
            for piece in pieces:
                connection.send(piece)
            response = connection.getresponse()
            response.read()
        seconds = time.monotonic() - started
        connection.close()
        return UploadResult(
            kind,
            size,
            response.status,
            seconds,
            mb(watch.start_rss),
            mb(watch.peak_rss),
            job_path=response.getheader("Location") or "",
            cookie=cookie,
        )
    finally:
        server.stop()  # removes its instance folder: the spooled upload and the job's input
