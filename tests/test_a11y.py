"""Accessibility: axe-core audits every page state a person sees, in a real headless Chromium.

Each state is produced for real against gunicorn and a worker process: forms refused in
place, jobs queued (the worker is down), running, succeeded, failed, cancelled and
interrupted (the worker was killed), the job list empty and full, the 404, 429 and 503
pages, the polling and the no-JavaScript job page. Any WCAG 2.0/2.1 A or AA violation, or
any of axe's best practices, fails the test with the rule, the elements and the help URL.

The last test does a whole run with the keyboard alone, checking the focus ring at each stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .a11y_support import AXE_VERSION, assert_accessible, axe_results
from .browser_support import (
    JOB_URL,
    KEEPALIVE_SECONDS,
    WAIT_MS,
    ServerPool,
    job_id_of,
    post_job,
    wait_for_job,
)
from .conftest import wait_for

pytestmark = pytest.mark.browser

# Short, so that a killed worker's job shows as interrupted within seconds; the worker beats
# six times per timeout, so a live job never looks dead.
HEARTBEAT_TIMEOUT = 4
RUNNING_JOBS_PER_OWNER = 10  # the default of HEADWAY_RUNNING_JOBS_PER_OWNER
SHOWS_STATUS = "s => document.querySelector('#job-progress')?.dataset.status === s"


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    """The module's live servers and their one worker (which a test kills and restarts)."""
    pool = ServerPool(worker_env={"HEADWAY_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT)})
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def server(pool):
    """SSE (transport "auto") with slow keepalives, as in test_browser.py."""
    return pool.get(
        HEADWAY_KEEPALIVE_SECONDS=KEEPALIVE_SECONDS, HEADWAY_HEARTBEAT_TIMEOUT=HEARTBEAT_TIMEOUT
    )


@pytest.fixture(scope="module")
def poll_server(pool):
    return pool.get(HEADWAY_TRANSPORT="poll", HEADWAY_HEARTBEAT_TIMEOUT=HEARTBEAT_TIMEOUT)


@pytest.fixture
def context(new_context):
    return new_context(accept_downloads=True)


# --- helpers -------------------------------------------------------------------------------


class Audit:
    """Audits several states in one test and reports every violation found, not the first."""

    def __init__(self, page):
        self.page = page
        self.failures: list[str] = []

    def __call__(self, state: str, page=None, **options) -> None:
        try:
            assert_accessible(page or self.page, state, **options)
        except AssertionError as failure:
            self.failures.append(str(failure))

    def assert_clean(self) -> None:
        assert not self.failures, "\n\n".join(self.failures)


def csrf_token(page) -> str:
    """The page's CSRF token (every page carries it for htmx)."""
    return json.loads(page.locator("body").get_attribute("hx-headers"))["X-CSRFToken"]


def open_job(page, base: str, job_id: str, status: str) -> None:
    page.goto(f"{base}/jobs/{job_id}")
    page.wait_for_function(SHOWS_STATUS, arg=status, timeout=WAIT_MS * 2)


def wait_log_lines(page, count: int) -> None:
    page.wait_for_function(
        "n => document.querySelectorAll('#job-log li').length >= n", arg=count, timeout=WAIT_MS
    )


def submit_refused(page, base: str, slug: str, files: list[Path], **fields: str) -> None:
    """Submit a kind's form that the server refuses; wait for its message in place.

    The browser's own checks are off, as in a browser that has none, so that the server's
    answer to a field out of range is what shows.
    """
    page.goto(f"{base}/jobs/new/{slug}")
    page.locator("#job-form").evaluate("form => { form.noValidate = true; }")
    page.set_input_files("#job-form input[type=file]", [str(path) for path in files])
    for name, value in fields.items():
        page.fill(f"#{name}", value)
    with page.expect_response(f"{base}/jobs/new/{slug}") as answer:
        page.click("#job-form button[type=submit]")
    assert answer.value.status in (400, 413), answer.value.status
    page.locator("#form-error").wait_for()


# --- the audit itself ----------------------------------------------------------------------


def test_the_audit_runs_under_the_pages_csp_and_fails_a_broken_page(server, page, new_context):
    """axe runs despite the CSP that blocks inline script, and a broken page fails."""
    base = server.url
    csp = page.goto(base).headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp.split("script-src", 1)[1].split(";", 1)[0]
    broken = (
        '<!doctype html><html lang="en"><head><title>Broken</title></head><body><main>'
        "<h1>Broken on purpose</h1>"
        '<img src="data:,">'  # no alt text
        '<p style="color:#bbb;background:#fff">Too pale to read</p>'
        "<input>"  # no label
        '<noscript><p class="shown-without-js" style="color:#bbb">Pale too</p></noscript>'
        "<script>document.title = 'inline script ran'</script>"
        "</main></body></html>"
    )

    def serve_broken(route):
        route.fulfill(
            status=200,
            body=broken,
            headers={"Content-Type": "text/html", "Content-Security-Policy": csp},
        )

    page.route(f"{base}/broken-on-purpose", serve_broken)
    page.goto(f"{base}/broken-on-purpose")
    assert page.title() == "Broken", "the page's CSP was not in force"

    with pytest.raises(AssertionError) as failure:
        assert_accessible(page, "a broken page")

    message = str(failure.value)
    assert "3 accessibility rule(s) violated on a broken page" in message, message
    for rule, impact, target in (
        ("image-alt", "critical", "img"),
        ("color-contrast", "serious", "p"),
        ("label", "critical", "input"),
    ):
        assert f"{rule} ({impact}):" in message, message
        assert f"  - {target}: " in message, message
        assert f"https://dequeuniversity.com/rules/axe/{AXE_VERSION[:4]}/{rule}" in message
    assert "shown-without-js" not in message  # hidden where JavaScript runs

    # Without JavaScript: axe still runs, and sees what only such a browser shows.
    no_js = new_context(java_script_enabled=False).new_page()
    no_js.route(f"{base}/broken-on-purpose", serve_broken)
    no_js.goto(f"{base}/broken-on-purpose")
    with pytest.raises(AssertionError) as failure:
        assert_accessible(no_js, "a broken page without JavaScript", page_scripts=False)
    message = str(failure.value)
    assert "3 accessibility rule(s) violated" in message, message
    assert "  - .shown-without-js: " in message, message

    # And the app's own page passes, having been looked at by the rules asked for.
    page.goto(base)
    results = assert_accessible(page, "the home page")
    assert results["testEngine"]["version"] == AXE_VERSION
    tags = set(results["toolOptions"]["runOnly"]["values"])
    assert tags == {"wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"}


# --- pages without jobs --------------------------------------------------------------------


def test_pages_without_jobs(server, page):
    base = server.url
    audit = Audit(page)
    page.goto(base)
    audit("the home page, no jobs yet")
    page.goto(f"{base}/jobs")
    assert "No jobs yet" in page.locator("main").inner_text()
    audit("the job list, empty")
    for slug in ("images", "spreadsheet", "archive"):
        page.goto(f"{base}/jobs/new/{slug}")
        audit(f"the {slug} form, empty")
    response = page.goto(f"{base}/jobs/{'0' * 32}")
    assert response.status == 404
    audit("the 404 page")
    audit.assert_clean()


def test_forms_refused_with_their_messages(server, page, new_context, tmp_path):
    base = server.url
    audit = Audit(page)
    disguised = tmp_path / "photo.jpg"
    disguised.write_text("not a photo at all, only words\n")
    binary = tmp_path / "table.csv"
    binary.write_bytes(b"\x00\x01\x02" * 400)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")

    submit_refused(page, base, "images", [disguised])
    audit("the images form, a file refused")
    submit_refused(page, base, "images", [disguised], max_width="3")
    assert page.locator(".field-error").count() == 1
    audit("the images form, a field out of range")
    submit_refused(page, base, "spreadsheet", [binary])
    audit("the spreadsheet form, a file refused")
    submit_refused(page, base, "archive", [empty])
    audit("the archive form, an empty file refused")

    # Without JavaScript the whole page comes back, message included.
    no_js = new_context(java_script_enabled=False).new_page()
    no_js.goto(f"{base}/jobs/new/images")
    no_js.set_input_files("#job-form input[type=file]", [str(disguised)])
    with no_js.expect_navigation():
        no_js.click("#job-form button[type=submit]")
    assert "was refused" in no_js.locator("#form-error").inner_text()
    audit("the images form without JavaScript, a file refused", no_js, page_scripts=False)
    audit.assert_clean()


# --- the job page in each state, the job list full -----------------------------------------


def test_job_page_in_every_state_and_the_full_job_list(server, context, page):
    base = server.url
    audit = Audit(page)
    page.goto(base)
    token = csrf_token(page)
    running = post_job(context, base, token, steps=2000, delay=0.1)
    succeeded = post_job(context, base, token, steps=3, delay=0)
    failed = post_job(context, base, token, steps=5, delay=0, fail_at=2)
    to_cancel = post_job(context, base, token, steps=2000, delay=0.1)

    open_job(page, base, running, "running")
    wait_log_lines(page, 25)  # more than the log's box shows: it scrolls
    page.wait_for_function(
        "() => { const log = document.querySelector('#job-log');"
        " return log && log.scrollHeight > log.clientHeight; }"
    )
    assert page.locator(".stages li.done").count() >= 1
    audit("a running job (live over SSE), its log scrolling")

    wait_for_job(context, base, to_cancel, "running")
    page.goto(f"{base}/jobs/{to_cancel}")
    wait_log_lines(page, 25)
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function(SHOWS_STATUS, arg="cancelled", timeout=WAIT_MS * 2)
    audit("a cancelled job, with Retry")

    # The two faults this audit was brought in for are caught if they come back (on a page
    # that no longer changes, so that no live update undoes them first).
    page.locator("#job-log").evaluate("el => el.removeAttribute('tabindex')")
    page.locator(".stages li.done").first.evaluate("el => { el.style.color = '#1f8a4c'; }")
    broken = {rule["id"] for rule in axe_results(page)["violations"]}
    assert broken == {"scrollable-region-focusable", "color-contrast"}, broken

    open_job(page, base, succeeded, "succeeded")
    assert page.locator("#downloads a").count() == 1
    audit("a succeeded job, with its downloads")

    open_job(page, base, failed, "failed")
    assert "boom at step 2" in page.locator("#job-error").inner_text()
    page.get_by_role("button", name="Retry").wait_for()
    audit("a failed job, with Retry")
    page.get_by_role("button", name="Retry").click()
    page.wait_for_url(lambda url: JOB_URL.search(url) and failed not in url)
    page.wait_for_function(SHOWS_STATUS, arg="failed", timeout=WAIT_MS * 2)
    page.get_by_role("link", name="an earlier attempt").wait_for()
    audit("a failed retry, linked to its first attempt")
    open_job(page, base, failed, "failed")
    page.get_by_role("link", name="See the retry").wait_for()
    audit("a failed job that was retried, linked to its retry")

    page.goto(f"{base}/jobs")
    assert page.locator("#job-rows tbody tr").count() == 5
    audit("the job list, full")
    page.goto(base)
    assert page.locator("#job-rows tbody tr").count() == 5
    audit("the home page with recent jobs")

    # A job ends while its owner looks at the list: a notice says so.
    context.request.post(f"{base}/jobs/{running}/cancel", headers={"X-CSRFToken": token})
    page.goto(f"{base}/jobs")
    notice = post_job(context, base, token, steps=20, delay=0.1)
    page.locator("#notices .notice").first.wait_for(timeout=WAIT_MS * 2)
    wait_for_job(context, base, notice, "succeeded")
    audit("the job list, with a job-finished notice")
    audit.assert_clean()


def test_queued_interrupted_and_too_many_jobs(pool, server, context, page, new_context):
    """The worker is killed: its job ends interrupted, new ones wait queued, then 429."""
    base = server.url
    audit = Audit(page)
    page.goto(base)
    token = csrf_token(page)
    running = post_job(context, base, token, steps=2000, delay=0.1)
    wait_for_job(context, base, running, "running")
    pool.kill_worker()
    try:
        queued = post_job(context, base, token, steps=1, delay=0)
        open_job(page, base, queued, "queued")
        audit("a queued job (no worker free)")

        # Page views notice the silent worker (this page's stream would at its keepalive).
        wait_for_job(context, base, running, "interrupted")
        open_job(page, base, running, "interrupted")
        assert page.get_by_role("button", name="Retry").is_visible()
        audit("an interrupted job, with Retry")

        for _ in range(RUNNING_JOBS_PER_OWNER - 1):
            post_job(context, base, token, steps=1, delay=0)
        page.goto(f"{base}/jobs/new/steps")
        with page.expect_response(f"{base}/jobs/new/steps") as answer:
            page.click("#job-form button[type=submit]")
        assert answer.value.status == 429
        page.locator("#form-error").wait_for()  # beside the form, which stays
        audit("the steps form, refused in place with 429")

        same_owner = new_context(java_script_enabled=False, storage_state=context.storage_state())
        no_js = same_owner.new_page()
        no_js.goto(f"{base}/jobs/new/steps")
        with no_js.expect_response(f"{base}/jobs/new/steps") as answer:
            no_js.click("#job-form button[type=submit]")
        assert answer.value.status == 429
        # The form comes back, filled in, saying what stopped it.
        assert "wait for one to finish" in no_js.locator("#form-error").inner_text()
        audit("the steps form refused with 429, without JavaScript", no_js, page_scripts=False)
        no_js.goto(f"{base}/jobs/{running}")  # interrupted: Retry would make one job too many
        with no_js.expect_response(f"{base}/jobs/{running}/retry") as answer:
            no_js.click("#retry-button")
        assert answer.value.status == 429
        assert "Slow down" in no_js.locator("h1").inner_text()
        audit("the 429 page", no_js, page_scripts=False)
    finally:
        pool.start_worker()
    audit.assert_clean()


# --- the polling and no-JavaScript variants of the job page --------------------------------


def test_polling_and_no_javascript_job_pages(server, poll_server, context, page, new_context):
    audit = Audit(page)
    base = poll_server.url
    page.goto(base)
    job = post_job(context, base, csrf_token(page), steps=2000, delay=0.1)
    open_job(page, base, job, "running")
    page.wait_for_function("() => document.querySelectorAll('#job-log li').length >= 5")
    assert page.locator("#connection").get_attribute("data-state") == "polling"
    audit("a running job, polling")
    page.goto(f"{base}/jobs")
    audit("the job list, polling")
    page.get_by_role("link", name="Count steps").click()
    page.get_by_role("button", name="Cancel").click()
    page.wait_for_function(SHOWS_STATUS, arg="cancelled", timeout=WAIT_MS * 2)
    audit("a cancelled job, polling")

    base = server.url
    no_js_context = new_context(java_script_enabled=False)
    no_js = no_js_context.new_page()
    no_js.goto(f"{base}/jobs/new/steps")
    token = no_js.locator("input[name=csrf_token]").get_attribute("value")
    job = post_job(no_js_context, base, token, steps=2000, delay=0.1)
    no_js.goto(f"{base}/jobs/{job}")
    wait_for(lambda: no_js.locator("#job-status").inner_text() == "running")
    assert no_js.locator("#connection noscript").count() == 1
    # The page reloads itself every 2 s (that is how it stays current without JavaScript),
    # which axe flags whatever else the page offers; WCAG 2.2.1 asks that the person can
    # turn it off, which the page's "stop refreshing" link does.
    flagged = axe_results(no_js, page_scripts=False)["violations"]
    assert [rule["id"] for rule in flagged] == ["meta-refresh"], flagged
    audit(
        "a running job without JavaScript, refreshing itself",
        no_js,
        page_scripts=False,
        skip=("meta-refresh",),
    )
    no_js.reload()
    no_js.get_by_role("link", name="stop refreshing").click()
    assert no_js.url == f"{base}/jobs/{job}?refresh=off"
    assert 'http-equiv="refresh"' not in no_js.content()
    no_js.get_by_role("link", name="refresh every 2 s").wait_for()
    audit("a running job without JavaScript, not refreshing", no_js, page_scripts=False)
    no_js.click("text=Cancel")
    assert no_js.locator("#job-status").inner_text() in ("running", "cancelled")
    wait_for_job(no_js_context, base, job, "cancelled")
    no_js.goto(f"{base}/jobs/{job}")
    audit("a cancelled job without JavaScript", no_js, page_scripts=False)
    audit.assert_clean()


# --- Redis down ----------------------------------------------------------------------------


def test_the_503_page(server, page, redis_server):
    base = server.url
    page.goto(base)
    redis_server.stop()
    try:
        response = page.goto(f"{base}/jobs")
        assert response.status == 503
        assert_accessible(page, "the 503 page")
    finally:
        redis_server.start()
        server.wait_ready(need_consumer=False)


# --- the keyboard alone --------------------------------------------------------------------

ACCENT = "rgb(42, 98, 201)"  # --accent in static/headway.css: the focus ring's colour

FOCUSED = """() => {
    const el = document.activeElement, style = getComputedStyle(el);
    return {
        element: el === document.body ? "body" : el.outerHTML.slice(0, 120),
        ring: el.matches(":focus-visible"),
        outline: [style.outlineStyle, parseFloat(style.outlineWidth), style.outlineColor],
    };
}"""


def follow_link(page, url: str) -> None:
    """Enter on the focused link, then its page. Under a loaded machine Chromium has let the
    press go by (see open_file_chooser): if no navigation begins, the link must still have
    the focus, and a second press must go."""
    focused = page.evaluate("document.activeElement.outerHTML.slice(0, 120)")
    for attempt in (1, 2):
        page.keyboard.press("Enter")
        try:
            page.wait_for_url(url, wait_until="commit", timeout=10_000)
            break
        except PlaywrightTimeoutError:
            now = page.evaluate("document.activeElement.outerHTML.slice(0, 120)")
            assert now == focused, f"the focus moved from {focused} to {now}"
            if attempt == 2:
                raise
    page.wait_for_load_state()


def open_file_chooser(page, selector: str):
    """Space on the focused file input opens the file chooser. Now and then (about one run
    in five here) Chromium lets the press go by without one: the input must still have the
    focus then (where it went is the failure), and a second press must open it."""
    for attempt in (1, 2):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Space")
            return chooser.value
        except PlaywrightTimeoutError:
            focused = page.evaluate("document.activeElement.outerHTML.slice(0, 120)")
            assert page.evaluate("s => document.activeElement.matches(s)", selector), focused
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def tab_to(page, selector: str, *, backwards: bool = False, presses: int = 40) -> None:
    """Press Tab (or Shift+Tab) until `selector` has the focus; every stop shows the ring."""
    key = "Shift+Tab" if backwards else "Tab"
    for _ in range(presses):
        page.keyboard.press(key)
        focused = page.evaluate(FOCUSED)
        if focused["element"] != "body":
            assert_focus_ring(focused)
        if page.evaluate("s => document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"{key} never reached {selector}")


def assert_focus_ring(focused: dict) -> None:
    assert focused["ring"], f"no :focus-visible on {focused['element']}"
    style, width, color = focused["outline"]
    assert (style, color) == ("solid", ACCENT) and width >= 2, f"faint focus ring: {focused}"


def wait_status(page, status: str) -> None:
    page.wait_for_function(SHOWS_STATUS, arg=status, timeout=WAIT_MS * 2)


def test_a_whole_run_with_the_keyboard_alone(server, page, tmp_path):
    base = server.url
    notes = tmp_path / "notes.txt"
    notes.write_text("typed by nobody\n")
    page.goto(base)

    # Home → a kind's form; choose files in the file chooser that the keyboard opened.
    tab_to(page, "a[href='/jobs/new/archive']")
    follow_link(page, f"{base}/jobs/new/archive")
    tab_to(page, "#job-form input[type=file]")
    open_file_chooser(page, "#job-form input[type=file]").set_files([str(notes)])
    tab_to(page, "#archive_format")
    page.keyboard.press("ArrowDown")
    assert page.locator("#archive_format").input_value() == "tar.gz"
    tab_to(page, "#job-form button[type=submit]")
    page.keyboard.press("Enter")
    page.wait_for_url(JOB_URL)
    wait_status(page, "succeeded")

    # Download a result.
    tab_to(page, "#downloads a")
    with page.expect_download() as download:
        page.keyboard.press("Enter")
    assert download.value.suggested_filename == "SHA256SUMS"
    assert "notes.txt" in Path(download.value.path()).read_text()

    # Back up to the site's navigation, then a job that runs long enough to cancel.
    tab_to(page, "header nav a[href='/']", backwards=True)
    follow_link(page, f"{base}/")
    tab_to(page, "a[href='/jobs/new/steps']")
    follow_link(page, f"{base}/jobs/new/steps")
    tab_to(page, "#steps")
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.type("2000")
    tab_to(page, "#delay")
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.type("0.05")
    tab_to(page, "#job-form button[type=submit]")
    page.keyboard.press("Space")
    page.wait_for_url(JOB_URL)
    first = job_id_of(page.url)
    wait_status(page, "running")
    wait_log_lines(page, 25)

    # Cancel, with the focus kept on the button through live updates that replace it.
    tab_to(page, "#cancel-button")
    version = page.locator("#job-progress").get_attribute("data-version")
    page.wait_for_function(
        "v => document.querySelector('#job-progress').dataset.version !== v", arg=version
    )
    assert page.evaluate("() => document.activeElement.id") == "cancel-button"
    assert_focus_ring(page.evaluate(FOCUSED))
    page.keyboard.press("Enter")
    wait_status(page, "cancelled")

    # The log scrolls by keyboard; then back to Retry.
    tab_to(page, "#job-log")
    assert page.locator("#job-log").evaluate("el => el.scrollTop") == 0
    page.keyboard.press("End")
    page.wait_for_function("() => document.querySelector('#job-log').scrollTop > 0")
    tab_to(page, "#retry-button", backwards=True)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: JOB_URL.search(url) and first not in url)
    second = job_id_of(page.url)
    wait_status(page, "running")
    tab_to(page, "#cancel-button")
    page.keyboard.press("Space")
    wait_status(page, "cancelled")

    # My jobs → the first attempt, which links to its retry.
    tab_to(page, "header nav a[href='/jobs']", backwards=True)
    follow_link(page, f"{base}/jobs")
    tab_to(page, f"a[href='/jobs/{first}']")
    follow_link(page, f"{base}/jobs/{first}")
    tab_to(page, f"a[href='/jobs/{second}']")
    follow_link(page, f"{base}/jobs/{second}")
    assert page.locator("#job-status").inner_text() == "cancelled"


# --- what issue 14 added for people waiting ------------------------------------------------


def test_states_added_for_people_waiting(server, context, page, new_context, tmp_path):
    """The upload list refusing too many files, a job with Problems, the notify button
    pressed, the delete and clear-finished confirmations, the list filtered and paged."""
    base = server.url
    audit = Audit(page)
    notes = []
    for i in range(4):
        path = tmp_path / f"notes-{i}.txt"
        path.write_text(f"line {i}\n")
        notes.append(str(path))
    page.goto(f"{base}/jobs/new/lines")
    page.set_input_files("#job-form input[type=file]", notes)
    page.locator("#file-problem").wait_for()
    audit("the lines form, four files listed and too many for it")

    token = csrf_token(page)
    answer = context.request.post(
        f"{base}/jobs/new/batch",
        multipart={"csrf_token": token, "steps": "100", "delay": "0", "fail_at": "-1"},
        max_redirects=0,
    )
    batch = job_id_of(answer.headers["location"])
    open_job(page, base, batch, "succeeded")
    page.locator("#job-problems li").first.wait_for()
    audit("a job with a failed item, listed under Problems")

    alerts = new_context(permissions=["notifications"])
    watching = alerts.new_page()
    watching.goto(base)
    running = post_job(alerts, base, csrf_token(watching), steps=2000, delay=0.1)
    open_job(watching, base, running, "running")
    watching.get_by_role("button", name="Notify me when it finishes").click()
    watching.locator("#notify-button[aria-pressed=true]").wait_for()
    audit("a running job, notification asked for", watching)
    alerts.request.post(
        f"{base}/jobs/{running}/cancel", headers={"X-CSRFToken": csrf_token(watching)}
    )

    page.goto(f"{base}/jobs/{batch}/delete")
    audit("the delete confirmation")
    for _ in range(2):
        post_job(context, base, token, steps=1, delay=0)
    page.goto(f"{base}/jobs/clear-finished")
    audit("the clear-finished confirmation")
    page.goto(f"{base}/jobs?status=succeeded")
    wait_for(lambda: page.locator("#job-rows tbody tr").count() >= 1)
    audit("the job list, filtered")
    page.goto(f"{base}/jobs?status=cancelled")
    audit("the job list, filtered to nothing")
    audit.assert_clean()
