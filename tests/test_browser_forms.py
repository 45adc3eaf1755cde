"""A refused htmx upload shows its message next to the form and loses nothing: the files
chosen and the options set are still there, in Chromium. The page's own count and size
checks stop most such uploads before they start; the server's refusals are reached here
with those checks loosened, as in a browser whose script is out of date."""

from __future__ import annotations

import pytest

from .browser_support import JOB_URL
from .conftest import within_one_minute

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def live_server(live_servers):
    return live_servers(HEADWAY_KEEPALIVE_SECONDS=120, HEADWAY_JOBS_PER_MINUTE=2)


def chosen_files(page) -> list[str]:
    return page.eval_on_selector(
        "#job-form input[type=file]", "input => Array.from(input.files, f => f.name)"
    )


def loosen_browser_checks(page) -> None:
    page.locator("#dropzone").evaluate(
        "zone => { zone.dataset.maxFiles = '99'; zone.dataset.maxBytes = '1e12'; }"
    )


def remove_all(page) -> None:
    while page.locator(".remove-file").count():
        page.locator(".remove-file").first.click()


def submit(page, base: str):
    with page.expect_response(f"{base}/jobs/new/lines") as answer:
        page.click("#job-form button[type=submit]")
    return answer.value


def test_refused_uploads_keep_the_form_files_and_options(live_server, page, tmp_path):
    base = live_server.url
    texts = []
    for i in range(4):
        path = tmp_path / f"notes-{i}.txt"
        path.write_text(f"line {i}\n")
        texts.append(str(path))
    big = [tmp_path / "big-1.txt", tmp_path / "big-2.txt"]
    for path in big:
        path.write_bytes(b"x" * 599_999 + b"\n")

    page.goto(f"{base}/jobs/new/lines")
    page.evaluate("window.__marker = 'loaded once'")
    page.fill("#steps", "7")
    page.fill("#delay", "0.25")
    error = page.locator("#form-error")

    # Too many files: the page says so before sending anything.
    page.set_input_files("#job-form input[type=file]", texts)
    page.click("#job-form button[type=submit]")
    problem = page.locator("#file-problem")
    assert problem.inner_text() == (
        "Too many files: 4 chosen, this form takes at most 3. Remove 1 file."
    )
    assert chosen_files(page) == [f"notes-{i}.txt" for i in range(4)]
    assert page.locator("#job-form button[type=submit]").is_enabled()

    # The server decides all the same: refused as the body streams, beside the form.
    loosen_browser_checks(page)
    assert submit(page, base).status == 400
    error.wait_for()
    assert error.inner_text() == "Too many files: more than 3 chosen, Count lines takes at most 3."
    assert chosen_files(page) == [f"notes-{i}.txt" for i in range(4)]
    assert page.locator("#steps").input_value() == "7"
    assert page.locator("#delay").input_value() == "0.25"
    assert page.locator("#job-form button[type=submit]").is_enabled()

    # Too large: the kind's 1 MB is crossed mid-body.
    remove_all(page)
    page.set_input_files("#job-form input[type=file]", [str(p) for p in big])
    assert submit(page, base).status == 413
    page.locator("#form-error", has_text="1.0 MB").wait_for()
    assert error.inner_text() == "The files add up to more than 1.0 MB, the most Count lines takes."
    assert chosen_files(page) == ["big-1.txt", "big-2.txt"]

    # Over the jobs-per-minute limit (2 here): 429, and still nothing lost.
    remove_all(page)
    page.set_input_files("#job-form input[type=file]", texts[:1])
    context = page.context
    token = page.get_attribute("input[name=csrf_token]", "value")
    within_one_minute()
    for _ in range(2):
        started = context.request.post(
            f"{base}/jobs/new/steps",
            multipart={"csrf_token": token, "steps": "1", "delay": "0", "fail_at": "-1"},
            max_redirects=0,
        )
        assert started.status == 303
    assert submit(page, base).status == 429
    page.locator("#form-error", has_text="this minute").wait_for()
    assert error.inner_text() == "Too many jobs started this minute (2 at most)."
    assert chosen_files(page) == ["notes-0.txt"]
    assert page.locator("#steps").input_value() == "7"

    # The same document all along: nothing reloaded, nothing replaced.
    assert page.url == f"{base}/jobs/new/lines"
    assert page.evaluate("window.__marker") == "loaded once"
    assert JOB_URL.search(page.url) is None
