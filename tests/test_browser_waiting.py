"""What a person waiting on a job sees and does, in Chromium (issue 14): the place in the
queue, times in their own zone, the favicon and a notification, what a screen reader hears,
a calm ETA, problems up front with a retry of the failed items, the upload form, and
deleting jobs (one, or every finished one) with a job list that filters and pages.

One worker thread runs this module's jobs, so that jobs queue behind each other.
"""

from __future__ import annotations

import datetime
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from .a11y_support import assert_accessible
from .browser_support import (
    JOB_URL,
    WAIT_MS,
    ServerPool,
    job_id_of,
    job_json,
    post_job,
    throttle_uploads,
    wait_for_job,
)
from .conftest import wait_for

pytestmark = pytest.mark.browser

SHOWS_STATUS = "s => document.querySelector('#job-progress')?.dataset.status === s"
PER_PAGE = 3

# Records what the person would notice: notifications shown (the real API is still called),
# permission requests, and lets a test hide the tab as switching to another one would.
NOTIFY_JS = """
(() => {
  window.__notes = []; window.__asked = 0; window.__hidden = false;
  Object.defineProperty(document, "visibilityState",
                        { get: () => (window.__hidden ? "hidden" : "visible") });
  Object.defineProperty(document, "hidden", { get: () => window.__hidden });
  const Real = window.Notification;
  if (!Real) { return; }
  class Recorded extends Real {
    constructor(title, options) {
      window.__notes.push({ title, body: options && options.body });
      super(title, options);
    }
    static get permission() { return Real.permission; }
    static requestPermission(...args) {
      window.__asked += 1;
      return Real.requestPermission(...args);
    }
  }
  window.Notification = Recorded;
})();
"""

# Records every text the polite live region says, and every ETA shown with the percent.
LISTEN_JS = """
(() => {
  window.__said = []; window.__etas = []; window.__icons = [];
  const look = () => {
    const box = document.getElementById("job-announcer");
    if (box && box.textContent && box.textContent !== window.__said[window.__said.length - 1]) {
      window.__said.push(box.textContent);
    }
    const eta = document.getElementById("job-eta"), meter = document.getElementById("job-meter");
    if (eta && meter) {
      const entry = [Number(meter.dataset.percent), eta.textContent.trim()];
      const last = window.__etas[window.__etas.length - 1];
      if (!last || last[0] !== entry[0] || last[1] !== entry[1]) { window.__etas.push(entry); }
    }
    const icon = document.getElementById("favicon");
    if (icon && icon.dataset.state && !window.__icons.some((i) => i[1] === icon.href)) {
      window.__icons.push([icon.dataset.state, icon.href]);
    }
  };
  new MutationObserver(look).observe(document, {
    subtree: true, childList: true, attributes: true, characterData: true,
  });
})();
"""


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool():
    pool = ServerPool(worker_env={"HEADWAY_WORKERS": "1"})
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="module")
def server(pool):
    return pool.get(HEADWAY_KEEPALIVE_SECONDS=120, HEADWAY_JOBS_PER_PAGE=PER_PAGE)


# --- helpers -------------------------------------------------------------------------------


def csrf_token(page) -> str:
    return json.loads(page.locator("body").get_attribute("hx-headers"))["X-CSRFToken"]


def start(page, base: str) -> str:
    page.goto(base)
    return csrf_token(page)


def cancel(context, base: str, token: str, job_id: str) -> None:
    answer = context.request.post(
        f"{base}/jobs/{job_id}/cancel", headers={"X-CSRFToken": token}, max_redirects=0
    )
    assert answer.status in (200, 303), answer.text()


def wait_status(page, status: str) -> None:
    page.wait_for_function(SHOWS_STATUS, arg=status, timeout=WAIT_MS * 2)


def png(path: Path, color: str) -> Path:
    Image.new("RGB", (64, 48), color).save(path, "PNG")
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.effect_noise((300, 300), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


# --- 1. where am I in the queue ------------------------------------------------------------

QUEUE_TEXT = r"(less than a minute|about \d+ min)"


def test_a_queued_job_says_how_many_are_ahead_and_when_it_starts_live(server, context, page):
    base = server.url
    token = start(page, base)
    first = post_job(context, base, token, steps=1, delay=0)
    wait_for_job(context, base, first, "succeeded")  # the workers' pace is known now
    busy = post_job(context, base, token, steps=2000, delay=0.05)
    wait_for_job(context, base, busy, "running")  # the one worker thread is taken
    ahead = post_job(context, base, token, steps=1, delay=0)
    mine = post_job(context, base, token, steps=1, delay=0)

    page.goto(f"{base}/jobs/{mine}")
    position = page.locator("#job-queue")
    expect(position).to_have_text(re.compile(rf"^1 job ahead · starts in {QUEUE_TEXT}$"))
    listing = context.new_page()
    listing.goto(f"{base}/jobs")
    row = listing.locator(f"#job-row-{mine}")
    expect(row.locator(".queue-position")).to_have_text(re.compile(r"^1 job ahead · starts in "))
    for tab in (page, listing):
        tab.evaluate("window.__marker = 'loaded once'")

    # The job ahead leaves the queue: both pages move up, without a reload.
    cancel(context, base, token, ahead)
    expect(position).to_have_text(re.compile(rf"^Next in line · starts in {QUEUE_TEXT}$"))
    expect(row.locator(".queue-position")).to_have_text(re.compile(r"^Next in line"))
    for tab in (page, listing):
        assert tab.evaluate("window.__marker") == "loaded once"

    cancel(context, base, token, busy)
    wait_status(page, "succeeded")
    expect(position).to_have_count(0)
    expect(row.locator(".badge")).to_have_text("succeeded")


def test_without_any_finished_job_the_queue_position_shows_without_a_guess(server, context, page):
    base = server.url
    token = start(page, base)
    busy = post_job(context, base, token, steps=2000, delay=0.05)
    wait_for_job(context, base, busy, "running")
    mine = post_job(context, base, token, steps=1, delay=0)
    page.goto(f"{base}/jobs/{mine}")
    expect(page.locator("#job-queue")).to_have_text("Next in line")  # no pace: no estimate
    cancel(context, base, token, busy)
    wait_status(page, "succeeded")


# --- 2. times in the person's own time zone ------------------------------------------------


def test_times_show_in_the_readers_zone_and_relative_and_utc_without_javascript(
    server, new_context
):
    base = server.url
    context = new_context(timezone_id="Asia/Kolkata")  # UTC+05:30 all year
    page = context.new_page()
    page.clock.install()
    token = start(page, base)
    job = post_job(context, base, token, steps=3, delay=0)
    wait_for_job(context, base, job, "succeeded")
    page.goto(f"{base}/jobs/{job}")

    stamp = page.locator("#job-log time").first
    moment = datetime.datetime.fromisoformat(stamp.get_attribute("datetime"))
    local = moment.astimezone(datetime.timezone(datetime.timedelta(hours=5, minutes=30)))
    expect(stamp).to_have_text(local.strftime("%H:%M:%S"))
    assert stamp.get_attribute("title")  # the full local moment on hover
    finished = page.locator("#job-finished time")
    expect(finished).to_have_text(re.compile(r"^(just now|\d+ s ago)$"))

    # Relative times stay fresh as time passes (the page's clock, moved on).
    page.clock.fast_forward("10:00")
    expect(finished).to_have_text(re.compile(r"^1[01] min ago$"))
    page.goto(f"{base}/jobs")
    expect(page.locator(f"#job-row-{job} time")).to_have_text(re.compile(r"min ago$"))

    no_js = new_context(java_script_enabled=False, storage_state=context.storage_state())
    plain = no_js.new_page()
    plain.goto(f"{base}/jobs/{job}")
    utc = plain.locator("#job-log time").first
    assert utc.inner_text() == moment.strftime("%H:%M:%S UTC")
    assert plain.locator("#job-finished time").inner_text().endswith(" UTC")


# --- 3. favicon and "notify me when it finishes" ------------------------------------------


def test_favicon_follows_the_job_and_one_notification_comes_when_hidden(server, new_context):
    base = server.url
    context = new_context(permissions=["notifications"])
    context.add_init_script(NOTIFY_JS)
    context.add_init_script(LISTEN_JS)
    page = context.new_page()
    token = start(page, base)
    job = post_job(context, base, token, steps=60, delay=0.1)
    page.goto(f"{base}/jobs/{job}")
    wait_status(page, "running")

    button = page.get_by_role("button", name="Notify me when it finishes")
    expect(button).to_be_visible()
    assert page.evaluate("window.__asked") == 0  # never asked on load
    button.click()
    expect(button).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("window.__asked") == 1

    # The person switches to another tab.
    page.evaluate(
        "() => { window.__hidden = true; document.dispatchEvent(new Event('visibilitychange')); }"
    )
    wait_for(lambda: page.evaluate("window.__notes.length") == 1, timeout=WAIT_MS / 1000 * 2)
    note = page.evaluate("window.__notes[0]")
    assert note["body"] == "The job succeeded. Your results are ready."
    assert note["title"].startswith("Count steps")
    assert page.locator("#job-progress").get_attribute("data-status") == "succeeded"

    icons = page.evaluate("window.__icons")
    states = [state for state, _ in icons]
    assert all(href.startswith("data:image/png;base64,") for _, href in icons)
    assert len({s for s in states if s.startswith("running:")}) >= 2, states  # it moved
    assert states[-1] == "succeeded:100", states
    assert page.evaluate("window.__notes.length") == 1  # once

    # A tab that stays in front gets no notification: the page says it already.
    shown = context.new_page()
    shown.goto(base)
    other = post_job(context, base, token, steps=60, delay=0.05)
    shown.goto(f"{base}/jobs/{other}")
    shown.get_by_role("button", name="Notify me when it finishes").click()
    wait_status(shown, "succeeded")
    assert shown.evaluate("window.__notes.length") == 0
    assert shown.locator("#favicon").get_attribute("data-state") == "succeeded:100"
    expect(shown.locator("#notify")).to_be_hidden()


# --- 4. accessible live updates ------------------------------------------------------------

SAID = re.compile(r"^(Stage: \w+\.)?( ?[1-9]0 percent\.)?$")


def test_the_live_region_says_stages_every_ten_percent_and_the_outcome_only(server, new_context):
    base = server.url
    context = new_context()
    context.add_init_script(LISTEN_JS)
    page = context.new_page()
    token = start(page, base)
    busy = post_job(context, base, token, steps=2000, delay=0.05)
    wait_for_job(context, base, busy, "running")
    job = post_job(context, base, token, steps=200, delay=0.02)
    page.goto(f"{base}/jobs/{job}")  # while it waits: every stage is still to come
    wait_status(page, "queued")
    cancel(context, base, token, busy)
    wait_status(page, "succeeded")

    said = page.evaluate("window.__said")
    versions = int(page.locator("#job-progress").get_attribute("data-version"))
    assert said[-1] == "The job succeeded. Your results are ready.", said
    assert all(SAID.match(text) for text in said[:-1]), said
    assert any("Stage: Count." in text for text in said), said
    tens = [int(m) for text in said for m in re.findall(r"(\d+) percent", text)]
    assert tens == sorted(set(tens)) and len(tens) >= 5, said  # each ten once, going up
    assert len(said) <= 14 < versions, (said, versions)  # far fewer than the updates

    snapshot = page.locator("#job-announcer").aria_snapshot()
    assert snapshot == "- status: The job succeeded. Your results are ready.", snapshot
    bar = page.get_by_role("progressbar", name="Overall progress")
    expect(bar).to_have_attribute("aria-valuenow", "100")


# --- 5. a calmer ETA -----------------------------------------------------------------------


def test_the_eta_waits_for_evidence_then_reads_calmly_and_never_counts_up(server, new_context):
    base = server.url
    context = new_context()
    context.add_init_script(LISTEN_JS)
    page = context.new_page()
    token = start(page, base)
    job = post_job(context, base, token, steps=150, delay=0.04)
    page.goto(f"{base}/jobs/{job}")
    wait_status(page, "succeeded")

    etas = [(pct, text) for pct, text in page.evaluate("window.__etas") if text != "–"]
    assert etas, "no ETA was ever shown"
    first_guess = next(i for i, (_, text) in enumerate(etas) if text != "estimating…")
    # No guess at the start. The page may load a moment after the job began (10 % in one
    # loaded run), so the rule is checked on whatever it saw: nothing but "estimating…"
    # below 3 %, and a first guess only after it.
    assert etas[0][1] == "estimating…", etas
    assert all(text == "estimating…" for pct, text in etas if pct < 3), etas
    assert etas[first_guess][0] >= 3, etas  # a few percent of evidence first
    shown = [text for _, text in etas[first_guess:]]
    assert all(re.fullmatch(r"less than a minute|about \d+ min", t) for t in shown), etas
    minutes = [0 if t.startswith("less") else int(t.split()[1]) for t in shown]
    assert minutes == sorted(minutes, reverse=True), shown
    assert job_json(context, base, job)["eta_seconds"] in (0, None)


# --- 6. problems up front, and a retry of the failed items ---------------------------------


def test_failed_items_are_listed_with_reasons_and_retried_on_their_own(server, page, tmp_path):
    base = server.url
    files = [
        png(tmp_path / "red.png", "red"),
        truncated_jpeg(tmp_path / "broken.jpg"),
        png(tmp_path / "blue.png", "blue"),
    ]
    page.goto(f"{base}/jobs/new/images")
    page.set_input_files("#job-form input[type=file]", [str(p) for p in files])
    page.click("#job-form button[type=submit]")
    page.wait_for_url(JOB_URL)
    first = job_id_of(page.url)
    wait_status(page, "succeeded")

    problems = page.locator("#job-problems")
    expect(problems.get_by_role("heading")).to_have_text("Problems (1 item failed)")
    entry = problems.locator("li")
    expect(entry).to_have_count(1)
    reason = entry.inner_text().removeprefix("broken.jpg: ")
    assert reason != entry.inner_text() and reason, entry.inner_text()
    assert f"broken.jpg: skipped, {reason}" in page.locator("#job-log").inner_text()

    # The failed bar says so in words, to eyes and to the accessibility tree.
    failed_item = page.locator("#job-item-1")
    expect(failed_item.locator(".item-flag")).to_have_text("failed")
    assert 'progressbar "broken.jpg (failed)"' in page.locator("#job-items").aria_snapshot()
    assert_accessible(page, "a job with a failed item, Problems listed")

    page.get_by_role("button", name="Retry failed items").click()
    page.wait_for_url(lambda url: JOB_URL.search(url) and first not in url)
    wait_status(page, "failed")  # the one image is still broken
    assert page.locator(".items .item-name").all_inner_texts() == ["broken.jpg"]
    assert page.locator("#job-title").inner_text().endswith("(failed items)")
    page.get_by_role("link", name="an earlier attempt").click()
    page.wait_for_url(f"{base}/jobs/{first}")
    expect(page.get_by_role("link", name="See the retry of the failed items")).to_be_visible()

    # Twice asked, one attempt: the second lands on the first one's.
    token = csrf_token(page)
    again = page.context.request.post(
        f"{base}/jobs/{first}/retry-failed", headers={"X-CSRFToken": token}, max_redirects=0
    )
    assert again.status == 303
    assert first not in again.headers["location"]


def test_retry_failed_items_refuses_what_it_cannot_do(server, context, page):
    base = server.url
    token = start(page, base)
    clean = post_job(context, base, token, steps=1, delay=0)
    wait_for_job(context, base, clean, "succeeded")
    page.goto(f"{base}/jobs/{clean}")
    expect(page.get_by_role("button", name="Retry failed items")).to_have_count(0)
    post = context.request.post(
        f"{base}/jobs/{clean}/retry-failed", headers={"X-CSRFToken": token}, max_redirects=0
    )
    assert post.status == 409 and "no failed items" in post.text()
    forged = context.request.post(f"{base}/jobs/{clean}/retry-failed", max_redirects=0)
    assert forged.status == 400


# --- 7. the upload form --------------------------------------------------------------------


def drop_files(page, selector: str, files: dict[str, str]) -> None:
    """Drop files onto an element, as dragging them from the desktop does."""
    transfer = page.evaluate_handle(
        """files => { const dt = new DataTransfer();
            for (const [name, text] of Object.entries(files)) {
              dt.items.add(new File([text], name, { type: "text/plain" }));
            }
            return dt; }""",
        files,
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def listed(page) -> list[str]:
    return page.locator("#file-list li").all_inner_texts()


def test_the_upload_form_drops_lists_removes_checks_and_cancels(server, new_context, tmp_path):
    base = server.url
    context = new_context()
    page = context.new_page()
    picked = []
    for i in range(2):
        path = tmp_path / f"notes-{i}.txt"
        path.write_text(f"line {i}\n")
        picked.append(str(path))
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    page.goto(f"{base}/jobs/new/lines")
    page.set_input_files("#job-form input[type=file]", picked)  # the picker
    drop_files(page, "#dropzone", {"dropped-a.txt": "a\n", "dropped-b.txt": "b\nb\n"})
    assert [re.sub(r"\s+", " ", t) for t in listed(page)] == [
        "notes-0.txt 7 B Remove",
        "notes-1.txt 7 B Remove",
        "dropped-a.txt 2 B Remove",
        "dropped-b.txt 4 B Remove",
    ]
    problem = page.locator("#file-problem")
    expect(problem).to_have_text(
        "Too many files: 4 chosen, this form takes at most 3. Remove 1 file."
    )
    page.click("#job-form button[type=submit]")
    expect(problem).to_be_visible()
    assert posts == []  # nothing was sent
    assert page.locator("#job-form button[type=submit]").is_enabled()

    page.get_by_role("button", name="Remove notes-0.txt").click()
    expect(problem).to_be_hidden()
    expect(page.locator("#file-summary")).to_have_text("3 files, 13 B of at most 3 files, 1.0 MB.")
    files = page.eval_on_selector("#files", "input => Array.from(input.files, f => f.name)")
    assert files == ["notes-1.txt", "dropped-a.txt", "dropped-b.txt"]

    # Too large, checked before sending too.
    drop_files(page, "#dropzone", {})  # nothing dropped: nothing changes
    page.get_by_role("button", name="Remove dropped-b.txt").click()
    big = tmp_path / "big.txt"
    big.write_bytes(b"x\n" * 600_000)
    page.set_input_files("#job-form input[type=file]", [str(big)])
    expect(problem).to_have_text(
        "Too large: the files add up to 1.2 MB, more than the 1.0 MB this form takes."
    )
    page.get_by_role("button", name="Remove big.txt").click()

    page.click("#job-form button[type=submit]")
    page.wait_for_url(JOB_URL)
    job = job_id_of(page.url)
    wait_status(page, "succeeded")
    assert page.locator("#job-title").inner_text() == "Count lines: notes-1.txt and 1 more"
    result = context.request.get(f"{base}/jobs/{job}/files/lines.txt")
    assert result.text() == "notes-1.txt\t1\ndropped-a.txt\t1\n"


def test_an_upload_shows_its_speed_and_time_left_and_can_be_cancelled(
    server, new_context, tmp_path
):
    base = server.url
    context = new_context()
    page = context.new_page()
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 6_000_000)
    throttle_uploads(page, 400_000)
    page.goto(f"{base}/jobs/new/archive")
    page.set_input_files("#job-form input[type=file]", [str(big)])
    page.click("#job-form button[type=submit]")
    rate = page.locator("#upload-rate")
    expect(rate).to_have_text(re.compile(r"^\d+\.\d [KM]B/s · (\d+ s|about \d+ min) left$"))
    cancel_button = page.get_by_role("button", name="Cancel upload")
    cancel_button.click()
    expect(page.locator("#form-error")).to_have_text(
        "Upload cancelled: nothing was started. Your files are still chosen."
    )
    expect(page.locator("#upload-progress")).to_be_hidden()
    assert page.locator("#job-form button[type=submit]").is_enabled()
    assert [re.sub(r"\s+", " ", t) for t in listed(page)] == ["big.bin 6.0 MB Remove"]
    assert JOB_URL.search(page.url) is None
    page.goto(f"{base}/jobs")
    assert "No jobs yet" in page.locator("main").inner_text()

    # Without JavaScript the plain form still works.
    plain = new_context(java_script_enabled=False).new_page()
    plain.goto(f"{base}/jobs/new/lines")
    small = tmp_path / "small.txt"
    small.write_text("one\ntwo\n")
    plain.set_input_files("#job-form input[type=file]", [str(small)])
    assert plain.locator("#file-list").is_hidden() and plain.locator("#drop-hint").is_hidden()
    plain.click("#job-form button[type=submit]")
    plain.wait_for_url(JOB_URL)


# --- 8. delete a job; clear, filter and page the list --------------------------------------


def test_the_owner_deletes_a_finished_job_and_nothing_of_it_is_left(
    server, context, page, new_context, store
):
    base = server.url
    token = start(page, base)
    job = post_job(context, base, token, steps=2, delay=0)
    wait_for_job(context, base, job, "succeeded")
    folder = store.job_dir(job)
    assert (folder / "output" / "count.txt").is_file()
    running = post_job(context, base, token, steps=2000, delay=0.05)
    wait_for_job(context, base, running, "running")

    page.goto(f"{base}/jobs/{job}")
    page.get_by_role("link", name="Delete this job and its files…").click()
    page.wait_for_url(f"{base}/jobs/{job}/delete")
    assert_accessible(page, "the delete confirmation")
    page.get_by_role("button", name="Delete the job and its files").click()
    page.wait_for_url(f"{base}/jobs?deleted=1")
    expect(page.get_by_role("status")).to_have_text("The job and its files were deleted.")
    expect(page.locator(f"#job-row-{job}")).to_have_count(0)

    for path in (
        f"/jobs/{job}",
        f"/jobs/{job}/events",
        f"/jobs/{job}/progress",
        f"/jobs/{job}/files/count.txt",
        f"/api/jobs/{job}",
        f"/jobs/{job}/delete",
    ):
        assert context.request.get(f"{base}{path}").status == 404, path
    assert not folder.exists()
    assert store.get(job) is None

    # A running job cannot be deleted (cancel it first); nobody else's at all; no forgery.
    refused = context.request.post(
        f"{base}/jobs/{running}/delete", headers={"X-CSRFToken": token}, max_redirects=0
    )
    assert refused.status == 409 and "cancel it first" in refused.text()
    cancel(context, base, token, running)
    wait_for_job(context, base, running, "cancelled")
    stranger = new_context()
    stranger_page = stranger.new_page()
    stranger_token = start(stranger_page, base)
    assert (
        stranger.request.post(
            f"{base}/jobs/{running}/delete",
            headers={"X-CSRFToken": stranger_token},
            max_redirects=0,
        ).status
        == 404
    )
    assert context.request.post(f"{base}/jobs/{running}/delete", max_redirects=0).status == 400
    assert store.get(running) is not None


def test_the_job_list_filters_pages_and_clears_finished_jobs(server, context, page):
    base = server.url
    token = start(page, base)
    done = [post_job(context, base, token, steps=1, delay=0) for _ in range(4)]
    failed = post_job(context, base, token, steps=3, delay=0, fail_at=1)
    for job in done:
        wait_for_job(context, base, job, "succeeded")
    wait_for_job(context, base, failed, "failed")
    running = post_job(context, base, token, steps=2000, delay=0.05)
    wait_for_job(context, base, running, "running")

    page.goto(f"{base}/jobs")
    rows = page.locator("#job-rows tbody tr")
    expect(rows).to_have_count(PER_PAGE)  # the newest three
    page.get_by_role("link", name="Older jobs").click()
    expect(rows).to_have_count(PER_PAGE)
    assert page.url == f"{base}/jobs?page=2"
    expect(page.get_by_role("link", name="Older jobs")).to_have_count(0)
    expect(page.get_by_role("link", name="Newer jobs")).to_be_visible()
    assert_accessible(page, "the job list, second page")

    page.select_option("#status-filter", "failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(f"{base}/jobs?status=failed")
    expect(rows).to_have_count(1)
    expect(page.locator(f"#job-row-{failed}")).to_be_visible()
    assert_accessible(page, "the job list, filtered")
    page.select_option("#status-filter", "active")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(f"#job-row-{running}")).to_be_visible()
    expect(rows).to_have_count(1)

    for query, status in (
        ("status=bogus", 400),
        ("page=abc", 400),
        ("page=0", 400),
        ("page=3", 404),
        ("status=failed&page=2", 404),
    ):
        assert context.request.get(f"{base}/jobs?{query}").status == status, query

    page.goto(f"{base}/jobs")
    page.get_by_role("link", name="Delete all finished jobs…").click()
    page.wait_for_url(f"{base}/jobs/clear-finished")
    assert_accessible(page, "the clear-finished confirmation")
    page.get_by_role("button", name="Delete 5 finished jobs").click()
    page.wait_for_url(f"{base}/jobs?cleared=5")
    expect(page.get_by_role("status")).to_have_text(
        "5 finished jobs were deleted with their files."
    )
    expect(rows).to_have_count(1)
    expect(page.locator(f"#job-row-{running}")).to_be_visible()
    for job in [*done, failed]:
        assert context.request.get(f"{base}/api/jobs/{job}").status == 404
    cancel(context, base, token, running)


def test_a_focused_link_in_the_job_list_keeps_the_focus_through_live_rows(server, context, page):
    """The list's stream sends every row when it opens and each row again when its job
    moves; a keyboard user on a row's link must not lose the focus to either."""
    base = server.url
    token = start(page, base)
    job = post_job(context, base, token, steps=60, delay=0.1)
    wait_for_job(context, base, job, "running")
    page.goto(f"{base}/jobs")
    row = f"#job-row-{job}"
    page.focus(f"{row} a")
    version = page.locator(row).get_attribute("data-version")
    page.wait_for_function(
        "([sel, v]) => document.querySelector(sel).dataset.version !== v", arg=[row, version]
    )
    assert page.evaluate("s => document.activeElement.matches(s)", f"{row} a")
