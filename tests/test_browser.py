"""The live pages in a real headless Chromium against gunicorn (gevent) and a worker process.

Each test asserts what a person sees: the bar moving, the connection indicator, the tab
title, the download link and its content, and that none of it needed a reload.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .browser_support import (
    JOB_URL,
    KEEPALIVE_SECONDS,
    WAIT_MS,
    bar_value_in_html,
    live_stream_count,
    post_job,
    seen,
    start_job_with_form,
    status_in_html,
    wait_for_job,
)

pytestmark = pytest.mark.browser

DOWNLOAD_LINK = "#downloads a"
SUCCEEDED = "() => document.querySelector('#job-progress')?.dataset.status === 'succeeded'"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(live_servers):
    """The default configuration (SSE allowed, transport "auto"), with slow keepalives.

    A job stream re-reads its record at every keepalive; with keepalives longer than any
    wait in these tests, a change the stream was not told about cannot reach the page
    through that back door and pass unnoticed.
    """
    return live_servers(HEADWAY_KEEPALIVE_SECONDS=KEEPALIVE_SECONDS)


# --- helpers -------------------------------------------------------------------------------


def record_documents(page) -> list[str]:
    """URLs of every document the page loads from now on (a reload adds one)."""
    documents: list[str] = []

    def on_request(request):
        if request.resource_type == "document":
            documents.append(request.url)

    page.on("request", on_request)
    return documents


def job_documents(documents: list[str]) -> list[str]:
    return [url for url in documents if JOB_URL.search(url)]


def assert_climbs_to_100(values: list[float]) -> None:
    assert values == sorted(values), f"progress went backwards: {values}"
    assert values[-1] == 100, values


def download(page) -> tuple[str, str]:
    """Click the download link as a person would: the file's name and content."""
    with page.expect_download() as info:
        page.click(DOWNLOAD_LINK)
    return info.value.suggested_filename, Path(info.value.path()).read_text()


def wait_until_done(page) -> list[dict]:
    """Wait for the download link and the final state; what the page showed on the way."""
    page.wait_for_selector(DOWNLOAD_LINK, timeout=WAIT_MS * 2)
    page.wait_for_function(SUCCEEDED)
    return seen(page)


# --- tests ---------------------------------------------------------------------------------


def test_job_runs_live_from_zero_to_download(live_server, page):
    base = live_server.url
    documents = record_documents(page)
    job_id = start_job_with_form(page, base, steps=40, delay=0.1)
    page.evaluate("window.__marker = 'loaded once'")

    snapshots = wait_until_done(page)

    values = [s["value"] for s in snapshots]
    assert_climbs_to_100(values)
    assert len({v for v in values if 0 < v < 100}) >= 5, f"too few intermediate values: {values}"
    assert any(s["conn"] == "live" and s["status"] == "running" for s in snapshots), snapshots
    titles = [s["title"] for s in snapshots]
    assert any(0 < int(m[1]) < 100 for t in titles if (m := re.match(r"(\d+)% · Count", t))), titles
    assert page.title().startswith("100% · Count steps")
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#connection .connection-text").inner_text() == "finished"
    # Not reloaded: the marker set after load survives and no other document was fetched.
    assert page.evaluate("window.__marker") == "loaded once"
    assert job_documents(documents) == [f"{base}/jobs/{job_id}"]
    assert download(page) == ("count.txt", "40\n")


def test_polling_takes_over_when_streams_are_refused(live_servers, page):
    base = live_servers(HEADWAY_MAX_STREAMS_PER_OWNER=0).url
    documents = record_documents(page)
    start_job_with_form(page, base, steps=40, delay=0.1)

    snapshots = wait_until_done(page)

    assert live_stream_count() == 0  # every stream was refused (429)
    assert any(s["conn"] == "polling" and s["status"] == "running" for s in snapshots), snapshots
    values = [s["value"] for s in snapshots]
    assert_climbs_to_100(values)
    assert any(0 < v < 100 for v in values), values
    assert page.locator("#connection .connection-text").inner_text() == "finished"
    assert len(job_documents(documents)) == 1  # polled, not reloaded
    assert download(page) == ("count.txt", "40\n")


def test_polling_takes_over_when_the_stream_never_says_anything(live_server, new_context):
    """A proxy that buffers the stream, or a request that hangs: no error, just silence.

    (The tab runs the shared connection itself, as where there is no SharedWorker: a
    SharedWorker's requests cannot be intercepted from the test.)"""
    page = new_context(shared_worker=False).new_page()
    held = []
    page.route("**/live?*", lambda route: held.append(route))  # never answered
    documents = record_documents(page)
    start_job_with_form(page, live_server.url, steps=120, delay=0.1)

    snapshots = wait_until_done(page)

    assert held  # the page did ask for its stream
    assert any(s["conn"] == "polling" and s["status"] == "running" for s in snapshots), snapshots
    assert_climbs_to_100([s["value"] for s in snapshots])
    assert len(job_documents(documents)) == 1
    assert download(page) == ("count.txt", "120\n")


def test_without_javascript_the_page_refreshes_itself(live_server, new_context):
    base = live_server.url
    context = new_context(java_script_enabled=False)
    page = context.new_page()
    posts, job_pages = [], []

    def on_response(response):
        if response.request.method == "POST":
            posts.append(response.status)
        elif JOB_URL.search(response.url):
            job_pages.append(response)

    page.on("response", on_response)
    page.goto(f"{base}/jobs/new/steps")
    page.fill("#steps", "25")
    page.fill("#delay", "0.2")
    page.click("#job-form button[type=submit]")
    page.wait_for_url(JOB_URL)

    assert posts == [303]
    first = job_pages[0].text()
    assert status_in_html(first) in ("queued", "running")
    assert 'http-equiv="refresh"' in first
    page.wait_for_selector(DOWNLOAD_LINK, timeout=WAIT_MS * 2)

    assert len(job_pages) >= 2, "the page never refreshed itself"
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#job-bar").get_attribute("aria-valuenow") == "100"
    assert 'http-equiv="refresh"' not in page.content()  # it stops once the job has ended
    href = page.locator(DOWNLOAD_LINK).get_attribute("href")
    response = context.request.get(f"{base}{href}")
    assert response.ok and response.text() == "25\n"


def test_reload_mid_job_shows_current_progress_then_continues(live_server, page):
    base = live_server.url
    job_id = start_job_with_form(page, base, steps=50, delay=0.1)
    page.wait_for_function(
        "() => Number(document.querySelector('#job-bar').getAttribute('aria-valuenow')) >= 20"
    )
    before = int(page.locator("#job-bar").get_attribute("aria-valuenow"))
    assert before < 100, "the job ended before the reload; it must be slower"

    with page.expect_response(f"{base}/jobs/{job_id}") as info:
        page.reload()
    rendered = bar_value_in_html(info.value.text())
    first_paint = seen(page)[0]["value"]

    assert rendered >= before > 0
    assert first_paint >= before
    snapshots = wait_until_done(page)
    values = [s["value"] for s in snapshots]
    assert_climbs_to_100(values)
    assert any(first_paint < v < 100 for v in values), f"no live update after reload: {values}"
    assert any(s["conn"] == "live" for s in snapshots), snapshots
    assert download(page) == ("count.txt", "50\n")


def test_job_finished_before_the_stream_started_still_ends_done(live_server, new_context):
    base = live_server.url
    context = new_context(shared_worker=False)  # so that the test can hold its stream
    page = context.new_page()
    held = []
    page.route("**/live?job=*", lambda route: held.append(route))  # held, not answered

    job_id = start_job_with_form(page, base, steps=10, delay=0.3)
    page.wait_for_load_state("load")
    rendered_status = page.locator("#job-status").inner_text()
    assert rendered_status in ("queued", "running")
    wait_for_job(context, base, job_id, "succeeded")

    assert len(held) == 1, "the page's stream request was not intercepted"
    # Nothing else told the page: it still shows the state it was rendered with.
    assert page.locator("#job-status").inner_text() == rendered_status
    assert page.locator(DOWNLOAD_LINK).count() == 0
    held[0].continue_()

    page.wait_for_selector(DOWNLOAD_LINK)
    assert page.locator("#job-status").inner_text() == "succeeded"
    assert page.locator("#job-bar").get_attribute("aria-valuenow") == "100"
    assert page.locator("#connection .connection-text").inner_text() == "finished"
    assert download(page) == ("count.txt", "10\n")


def test_job_list_uses_one_stream_for_eight_live_rows(live_server, context, page):
    base = live_server.url
    page.goto(f"{base}/jobs/new/steps")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    job_ids = [post_job(context, base, token, steps=15, delay=0.2) for _ in range(8)]

    documents = record_documents(page)
    with page.expect_response(f"{base}/jobs") as info:
        page.goto(f"{base}/jobs")
    page.evaluate("window.__marker = 'loaded once'")
    assert info.value.text().count('data-status="succeeded"') < 8, "jobs must be slower"

    page.wait_for_function(
        "() => document.querySelectorAll('#job-rows tr[data-status=succeeded]').length === 8",
        timeout=WAIT_MS * 2,
    )
    for job_id in job_ids:
        row = page.locator(f"#job-row-{job_id}")
        assert row.locator(".badge").inner_text() == "succeeded"
        assert row.locator("[role=progressbar]").get_attribute("aria-valuenow") == "100"
    assert live_stream_count() == 1
    assert page.evaluate("window.__marker") == "loaded once"
    assert documents == [f"{base}/jobs"]
    notice = page.locator("#notices .notice").first
    notice.wait_for()
    assert "succeeded" in notice.inner_text()


def test_a_foreign_visitor_gets_404_everywhere(live_server, context, page, new_context):
    base = live_server.url
    job_id = start_job_with_form(page, base, steps=3, delay=0.05)
    wait_for_job(context, base, job_id, "succeeded")
    events = f"{base}/jobs/{job_id}/events"
    urls = [
        f"{base}/jobs/{job_id}",
        events,
        f"{base}/jobs/{job_id}/progress",
        f"{base}/api/jobs/{job_id}",
        f"{base}/jobs/{job_id}/files/count.txt",
    ]
    for url in urls:  # the owner can open every one of them
        assert context.request.get(url).status == 200, url

    stranger = new_context()
    stranger_page = stranger.new_page()
    stranger_page.goto(base)  # an owner cookie of its own
    for url in urls:
        assert stranger.request.get(url).status == 404, url
    response = stranger_page.goto(f"{base}/jobs/{job_id}")
    assert response.status == 404
    assert "not yours to see" in stranger_page.locator("main").inner_text()

    with stranger_page.expect_response(events) as info:
        stranger_page.evaluate(
            "url => { const s = new EventSource(url); s.onerror = () => s.close(); }", events
        )
    assert info.value.status == 404
