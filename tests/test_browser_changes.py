"""Live messages carry only what changed: the page a browser builds from them must be the
page a fresh load shows."""

from __future__ import annotations

import re

import pytest

from .browser_support import job_id_of, seen

pytestmark = pytest.mark.browser

NORMALIZE = re.compile(r">\s+<")


def region(page) -> str:
    """#job-progress as the person sees it: its markup, give or take whitespace between tags."""
    html = page.locator("#job-progress").evaluate("e => e.outerHTML")
    return NORMALIZE.sub("><", html).strip()


@pytest.fixture(scope="module")
def live_server(live_servers):
    return live_servers()


@pytest.mark.timeout(180)
def test_a_500_item_job_watched_live_ends_as_a_fresh_load_shows_it(live_server, context):
    base = live_server.url
    page = context.new_page()
    page.goto(f"{base}/jobs/new/batch")
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    answer = context.request.post(
        f"{base}/jobs/new/batch",
        multipart={"csrf_token": token, "steps": "500", "delay": "0.01", "fail_at": "-1"},
        max_redirects=0,
    )
    assert answer.status == 303, answer.text()
    job_id = job_id_of(answer.headers["location"])
    page.goto(f"{base}/jobs/{job_id}")
    # The stream's first message may be the whole region (the job moved on between the page
    # and the stream); from the first item done on, only changes come.
    page.locator("#job-items li.item-done").first.wait_for(timeout=60_000)
    page.evaluate("window.__region = document.getElementById('job-progress')")
    page.locator("#downloads a").first.wait_for(timeout=120_000)
    page.wait_for_timeout(300)  # htmx settles swapped elements 20 ms after the swap
    # Built from changes: the region was never replaced whole since.
    assert page.evaluate("document.getElementById('job-progress') === window.__region")
    values = [s["value"] for s in seen(page)]
    assert len({v for v in values if 0 < v < 100}) >= 5, values  # it was live all along

    fresh = context.new_page()
    fresh.goto(f"{base}/jobs/{job_id}")
    assert region(page) == region(fresh)
    assert page.locator("#job-items li").count() == 500
    assert page.locator("#job-items li.item-failed").count() == 5
    assert page.locator("#job-log li").count() == 50  # the newest 50, as a fresh load shows
