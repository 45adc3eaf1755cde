"""Faults while browsers watch: the web server restarted, Redis restarted, a flood of streams.

Each browser test watches a job in headless Chromium and asserts what a person sees: the page
ends in the job's final state, with its download link or its Retry button, without a manual
reload, and its bar never goes backwards on the way.
"""

from __future__ import annotations

import http.client
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from headway.limits import held

from .browser_support import (
    JOB_URL,
    KEEPALIVE_SECONDS,
    WAIT_MS,
    job_id_of,
    seen,
    start_job_with_form,
    status_in_html,
)
from .conftest import wait_for

pytestmark = pytest.mark.browser

DOWNLOAD_LINK = "#downloads a"
FINAL_STATUSES = ("succeeded", "failed", "cancelled", "interrupted")
SHOWS_FINAL = (
    "() => ['succeeded', 'failed', 'cancelled', 'interrupted']"
    ".includes(document.querySelector('#job-progress')?.dataset.status)"
)
CONNECTION_TEXT = "document.querySelector('#connection .connection-text')?.textContent.trim()"
MAX_STREAMS_PER_OWNER = 20  # the default of HEADWAY_MAX_STREAMS_PER_OWNER
TOO_MANY_STREAMS = "Too many live streams open (20 at most); close some tabs."


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def live_server(live_servers):
    """Slow keepalives, so that only the stream's own reconnection can bring news (see
    test_browser.py); running again after the test, whatever the test did to it."""
    server = live_servers(HEADWAY_KEEPALIVE_SECONDS=KEEPALIVE_SECONDS)
    yield server
    if server.process.poll() is not None:
        server.start()


# --- helpers -------------------------------------------------------------------------------


def record_job_documents(page) -> list[str]:
    """URLs of the job pages the tab loads from now on (a reload would add one)."""
    documents: list[str] = []

    def on_request(request):
        if request.resource_type == "document" and JOB_URL.search(request.url):
            documents.append(request.url)

    page.on("request", on_request)
    return documents


def wait_live_at(page, percent: int) -> None:
    """Until the page is live over its stream and its bar shows at least `percent`."""
    page.wait_for_function(
        f"""() => {CONNECTION_TEXT} === 'live' && Number(
            document.querySelector('#job-bar').getAttribute('aria-valuenow')) >= {percent}"""
    )


def wait_connection_text(page, text: str) -> None:
    page.wait_for_function(f"text => {CONNECTION_TEXT} === text", arg=text)


def final_status(page) -> str:
    page.wait_for_function(SHOWS_FINAL, timeout=WAIT_MS * 2)
    return page.locator("#job-status").inner_text()


def bar_values(page) -> list[float]:
    values = [s["value"] for s in seen(page)]
    assert values == sorted(values), f"progress went backwards: {values}"
    return values


def download(page) -> tuple[str, str]:
    with page.expect_download() as info:
        page.click(DOWNLOAD_LINK)
    return info.value.suggested_filename, Path(info.value.path()).read_text()


# --- the web process restarted -------------------------------------------------------------


def test_web_restart_mid_job_reconnects_and_continues(live_server, page, store):
    base = live_server.url
    documents = record_job_documents(page)
    job_id = start_job_with_form(page, base, steps=80, delay=0.1)
    wait_live_at(page, 15)  # counting (preparing alone makes 10 %)

    live_server.stop()
    wait_connection_text(page, "reconnecting…")  # what the person is told meanwhile
    done = store.get(job_id).done
    wait_for(lambda: store.get(job_id).done > done)  # the worker carries on regardless
    live_server.start()
    assert store.get(job_id).status == "running", "the job ended too soon; make it slower"

    assert final_status(page) == "succeeded"
    snapshots = seen(page)
    values = bar_values(page)
    assert values[-1] == 100
    down = next(i for i, s in enumerate(snapshots) if s["conn"] == "reconnecting…")
    at_down = snapshots[down]["value"]
    assert any(s["status"] == "running" and s["value"] > at_down for s in snapshots[down:]), (
        f"no live update after the restart: {snapshots}"
    )
    assert page.locator("#connection .connection-text").inner_text() == "finished"
    assert documents == [f"{base}/jobs/{job_id}"], "the page was reloaded"
    assert download(page) == ("count.txt", "80\n")


def test_job_finished_while_the_web_server_was_down_shows_done(live_server, page, store):
    base = live_server.url
    documents = record_job_documents(page)
    job_id = start_job_with_form(page, base, steps=30, delay=0.1)
    wait_live_at(page, 15)

    live_server.stop()
    wait_for(lambda: store.get(job_id).status == "succeeded", timeout=60)
    wait_connection_text(page, "reconnecting…")
    # Nothing could tell the page yet: it still shows the job running.
    assert page.locator("#job-status").inner_text() == "running"
    assert page.locator(DOWNLOAD_LINK).count() == 0
    live_server.start()

    assert final_status(page) == "succeeded"
    page.wait_for_selector(DOWNLOAD_LINK)
    assert bar_values(page)[-1] == 100
    assert page.locator("#connection .connection-text").inner_text() == "finished"
    assert documents == [f"{base}/jobs/{job_id}"], "the page was reloaded"
    assert download(page) == ("count.txt", "30\n")


# --- Redis restarted -----------------------------------------------------------------------


def test_redis_restart_mid_job_page_ends_in_the_final_state(live_server, page, redis_server):
    base = live_server.url
    documents = record_job_documents(page)
    job_id = start_job_with_form(page, base, steps=60, delay=0.1)
    wait_live_at(page, 15)

    redis_server.restart()  # same port, same data (append-only file)
    restarted_at = len(seen(page))

    status = final_status(page)
    assert status in ("succeeded", "interrupted"), status
    if status == "succeeded":
        assert download(page) == ("count.txt", "60\n")
        values = bar_values(page)
        assert values[-1] == 100
        after = values[restarted_at:]
        assert any(values[restarted_at - 1] < v < 100 for v in after), f"not live: {values}"
    else:  # the worker lost Redis for too long: the person can run it again
        assert page.get_by_role("button", name="Retry").is_visible()
        bar_values(page)
    assert all(s["status"] in ("queued", "running", status) for s in seen(page)), seen(page)
    assert documents == [f"{base}/jobs/{job_id}"], "the page was reloaded"


# --- a flood of streams from one owner -----------------------------------------------------


class Stream:
    """One raw HTTP connection to a stream URL, open until closed."""

    def __init__(self, port: int, path: str, cookie: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_MS / 1000)
        try:
            self.connection.request(
                "GET", path, headers={"Cookie": cookie, "Accept": "text/event-stream"}
            )
            self.response = self.connection.getresponse()
            self.status = self.response.status
            if self.status == 200:
                self.first_line = self.response.readline().decode()
                self.body = ""
            else:
                self.first_line, self.body = "", self.response.read().decode()
                self.close()
        except BaseException:
            self.close()
            raise

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def close(self) -> None:
        # A stream's connection ends with it (Connection: close), and http.client hands the
        # socket of such a response to the response: closing the connection alone keeps it.
        if getattr(self, "response", None) is not None:
            self.response.close()
        self.connection.close()


def owner_session(base: str) -> tuple[requests.Session, str]:
    """A visitor with an owner cookie, and the CSRF token of their forms."""
    session = requests.Session()
    form = session.get(f"{base}/jobs/new/steps", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert form.ok and token, form.text
    return session, token[1]


def test_a_flood_of_streams_gets_twenty_and_polite_refusals(live_servers, store):
    server = live_servers(HEADWAY_KEEPALIVE_SECONDS=1)  # a closed stream is noticed at once
    base = server.url
    session, token = owner_session(base)
    created = session.post(
        f"{base}/jobs/new/steps",
        data={"csrf_token": token, "steps": 3000, "delay": 0.05, "fail_at": -1},
        allow_redirects=False,
        timeout=10,
    )
    assert created.status_code == 303, created.text
    job_id = job_id_of(created.headers["Location"])
    events = f"/jobs/{job_id}/events"
    cookie = "; ".join(f"{name}={value}" for name, value in session.cookies.items())
    slots = f"hw:streams:{store.get(job_id).owner}"  # the owner's open stream slots

    def open_stream() -> Stream:
        stream = Stream(server.port, events, cookie)
        streams.append(stream)
        return stream

    streams: list[Stream] = []
    try:
        start = threading.Barrier(200)

        def open_at_once():
            start.wait(timeout=30)
            return Stream(server.port, events, cookie)

        with ThreadPoolExecutor(max_workers=200) as pool:
            futures = [pool.submit(open_at_once) for _ in range(200)]
        streams = [f.result() for f in futures if f.exception() is None]
        assert len(streams) == 200, [f.exception() for f in futures if f.exception()][:3]

        served = [s for s in streams if s.status == 200]
        refused = [s for s in streams if s.status != 200]
        assert len(served) == MAX_STREAMS_PER_OWNER, sorted({s.status for s in streams})
        assert len(refused) == 200 - MAX_STREAMS_PER_OWNER
        for stream in served:
            assert stream.header("Content-Type").startswith("text/event-stream")
            assert stream.first_line.startswith("retry:")
        for stream in refused:
            assert stream.status == 429
            assert int(stream.header("Retry-After")) >= 1
            assert TOO_MANY_STREAMS in stream.body

        # The server and the owner's other pages are unharmed meanwhile.
        health = session.get(f"{base}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["redis"] is True
        job_page = session.get(f"{base}/jobs/{job_id}", timeout=10)
        assert job_page.status_code == 200 and status_in_html(job_page.text) == "running"

        # Closed streams give their slots back (released, not left to lapse: the process
        # that held them lives on, and renews its slots).
        closed = served[1:]  # served[0] stays open
        for stream in closed:
            stream.close()
        wait_for(lambda: held(store.client, slots) == 1, timeout=WAIT_MS / 1000)
        reopened = [open_stream() for _ in closed]
        assert [s.status for s in reopened] == [200] * len(closed)
        assert open_stream().status == 429  # and the cap still holds
    finally:
        for stream in streams:
            stream.close()
        cancel = session.post(
            f"{base}/jobs/{job_id}/cancel", data={"csrf_token": token}, timeout=10
        )
        assert cancel.ok
        wait_for(lambda: session.get(f"{base}/api/jobs/{job_id}").json()["status"] != "running")
        session.close()
