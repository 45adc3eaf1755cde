"""One live connection per browser: many tabs of one browser share it (SharedWorker, or a
tab elected with the Web Locks API where there is none), and every tab stays live.

Browsers allow six HTTP/1.1 connections per host for all tabs together: with one stream
per tab, the seventh tab would never load.
"""

from __future__ import annotations

import time

import pytest

from .browser_support import ServerPool, live_stream_count, post_job, seen, wait_for_job
from .conftest import wait_for

pytestmark = pytest.mark.browser

TABS = 12
HIDE = """() => {
  Object.defineProperty(document, "visibilityState", {configurable: true, get: () => "hidden"});
  document.dispatchEvent(new Event("visibilitychange"));
}"""
SHOW = """() => {
  delete document.visibilityState;  // the browser's own answer again: visible
  document.dispatchEvent(new Event("visibilitychange"));
}"""


@pytest.fixture(scope="module")
def many_jobs_server():
    pool = ServerPool(worker_env={"HEADWAY_WORKERS": str(TABS)})
    try:
        yield pool.get(HEADWAY_RUNNING_JOBS_PER_OWNER=2 * TABS, HEADWAY_JOBS_PER_MINUTE=100)
    finally:
        pool.stop()


def bar(page) -> int:
    return int(page.locator("#job-bar").get_attribute("aria-valuenow"))


def advances(page) -> None:
    """The page shows its job moving on from where it is now, by the live connection."""
    page.bring_to_front()
    start = bar(page)
    wait_for(lambda: bar(page) > start or page.locator("#job-status").inner_text() != "running")
    assert page.locator("#connection .connection-text").inner_text() in ("live", "finished")


@pytest.mark.parametrize("shared_worker", [True, False], ids=["shared-worker", "leader-tab"])
@pytest.mark.timeout(240)
def test_twelve_tabs_of_one_browser_stay_live_on_one_stream(
    many_jobs_server, new_context, shared_worker
):
    base = many_jobs_server.url
    context = new_context(shared_worker=shared_worker)
    first = context.new_page()
    first.goto(f"{base}/jobs/new/steps")
    token = first.locator("input[name=csrf_token]").first.get_attribute("value")
    # Job 0 ends while its tab is hidden; the others run for the whole test.
    job_ids = [post_job(context, base, token, steps=100, delay=0.2)]
    job_ids += [post_job(context, base, token, steps=400, delay=0.2) for _ in range(TABS - 1)]

    pages = [first]
    first.goto(f"{base}/jobs/{job_ids[0]}")
    for job_id in job_ids[1:]:
        page = context.new_page()
        # Blocked behind six streams a tab would never load; here each loads at once.
        page.goto(f"{base}/jobs/{job_id}", timeout=10_000)
        pages.append(page)
    listing = context.new_page()
    listing.goto(f"{base}/jobs", timeout=10_000)
    assert listing.locator("#job-rows tbody tr").count() == TABS

    # A tab in the background costs nothing: it stops listening, and catches up when shown.
    hidden = pages[0]
    advances(hidden)
    hidden.evaluate(HIDE)
    time.sleep(0.5)  # what was already on its way
    shown_while_hidden = len(seen(hidden))

    for page in pages[1:]:
        advances(page)
    # The server holds one stream for the whole browser.
    wait_for(lambda: live_stream_count() == 1)

    wait_for_job(context, base, job_ids[0], "succeeded")
    assert len(seen(hidden)) == shown_while_hidden, "a hidden tab kept rendering"
    assert hidden.locator("#downloads a").count() == 0
    hidden.evaluate(SHOW)
    hidden.locator("#downloads a").first.wait_for()
    assert hidden.locator("#job-status").inner_text() == "succeeded"
    assert hidden.locator("#connection .connection-text").inner_text() == "finished"

    # The first tab (the leader, without SharedWorker) goes: the others stay live.
    pages[0].close()
    for page in (pages[1], pages[-1], listing):
        page.bring_to_front()
    advances(pages[1])
    advances(pages[-1])
    wait_for(lambda: live_stream_count() == 1)
    context.close()
    wait_for(lambda: live_stream_count() == 0)  # and nothing is left behind


def test_a_browser_with_neither_shared_worker_nor_broadcast_channel_keeps_its_own_stream(
    many_jobs_server, browser
):
    from .browser_support import RECORDER_JS, start_job_with_form

    context = browser.new_context()
    context.add_init_script(RECORDER_JS)
    context.add_init_script("delete window.SharedWorker; delete window.BroadcastChannel;")
    try:
        page = context.new_page()
        start_job_with_form(page, many_jobs_server.url, steps=30, delay=0.1)
        page.locator("#downloads a").first.wait_for(timeout=60_000)
        values = [s["value"] for s in seen(page)]
        assert any(0 < v < 100 for v in values), values  # it was live, not reloaded
        assert any(s["conn"] == "live" for s in seen(page))
        assert page.locator("#connection .connection-text").inner_text() == "finished"
    finally:
        context.close()
