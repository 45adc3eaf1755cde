"""Upload checks run in checker processes with a time and memory budget, a bounded number
at once; refusals name what went wrong, and nothing of a refused upload stays on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app import create_app

from .upload_helpers import post_form

OWNER = "owner-checks"


def client_for(**config):
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, **config})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return client


def post(client, files, slug="slowcheck", headers=None, **fields):
    return post_form(client, slug, files, headers, **fields)


def nothing_left(store) -> bool:
    spool = store.settings.instance_path / "uploads"
    jobs = store.settings.jobs_dir
    return (not spool.exists() or not list(spool.iterdir())) and (
        not jobs.exists() or not list(jobs.rglob("*"))
    )


def test_a_check_over_its_time_budget_refuses_the_file_and_the_next_check_works(store):
    client = client_for(CHECK_SECONDS=1)
    response = post(client, [("ok.txt", b"fine\n"), ("slow.txt", b"spin 30")])
    assert response.status_code == 400
    assert "“slow.txt” was refused: could not be checked within 1 s." in response.text
    assert nothing_left(store) and not store.list_for_owner(OWNER)
    # The overrunning checker was killed; a fresh one answers the next upload.
    assert post(client, [("ok.txt", b"fine\n")]).status_code == 303


def test_a_check_over_its_memory_budget_refuses_the_file(store):
    client = client_for(CHECK_MEMORY_MB=400)
    response = post(client, [("greedy.txt", b"eat 2000")])
    assert response.status_code == 400
    assert "could not be checked within the memory limit (400 MB)" in response.text
    assert nothing_left(store)


def test_a_check_that_kills_its_process_refuses_the_file(store):
    response = post(client_for(), [("boom.txt", b"crash")])
    assert response.status_code == 400
    assert "“boom.txt” was refused: could not be checked (the check stopped unexpectedly)." in (
        response.text
    )
    assert post(client_for(), [("ok.txt", b"fine\n")]).status_code == 303


def test_a_check_refusal_is_shown_as_the_kind_words_it(store):
    response = post(client_for(), [("no.txt", b"refuse")])
    assert response.status_code == 400
    assert "“no.txt” was refused: says so itself." in response.text


def test_checks_are_bounded_and_a_waiting_upload_gets_503_with_retry_after(store):
    config = dict(CHECK_PROCESSES=1, CHECK_WAIT_SECONDS=0.5, CHECK_SECONDS=5)
    slow = client_for(**config)
    post(slow, [("warm.txt", b"fine\n")])  # a warm checker: the spin starts at once
    answers = {}
    thread = threading.Thread(
        target=lambda: answers.update(slow=post(slow, [("slow.txt", b"spin 2")]))
    )
    thread.start()
    time.sleep(0.5)
    waiting = post(client_for(**config), [("ok.txt", b"fine\n")])
    thread.join()
    assert waiting.status_code == 503
    assert "busy checking other uploads" in waiting.text
    assert int(waiting.headers["Retry-After"]) >= 1
    assert answers["slow"].status_code == 303


def test_checker_processes_are_reused(store):
    client = client_for(CHECK_PROCESSES=1)
    pool = client.application.extensions["headway"].checks
    post(client, [("a.txt", b"fine\n")])
    first = [c.process.pid for c in pool._idle]
    post(client, [("b.txt", b"fine\n"), ("c.txt", b"fine\n")])
    assert [c.process.pid for c in pool._idle] == first and len(first) == 1


def test_spool_files_of_a_crashed_process_are_swept_at_start(store):
    from headway.web.upload_body import HOST

    spool = store.settings.instance_path / "uploads"
    spool.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = spool / f"upload-{HOST}-{dead.pid}-0123456789abcdef"
    live = spool / f"upload-{HOST}-{os.getppid()}-0123456789abcdef"
    orphan.write_bytes(b"left by a crash")
    live.write_bytes(b"an upload in progress elsewhere")
    try:
        create_app({"TESTING": True})
        assert not orphan.exists()
        assert live.exists()
    finally:
        live.unlink(missing_ok=True)


def test_hostile_spreadsheets_are_judged_in_the_checkers(store, tmp_path: Path):
    from .hostile import many_entry_zip, quadratic_csvs

    client = client_for(CHECK_SECONDS=1)
    csv = quadratic_csvs(tmp_path, count=1)[0].read_bytes()
    response = post(client, [("q.csv", csv)], slug="spreadsheet", output_format="csv")
    # Accepted when the kind's sniffing is bounded; refused for its time otherwise.
    assert response.status_code in (303, 400)
    if response.status_code == 400:
        assert "“q.csv” was refused: could not be checked within 1 s." in response.text
    entries = many_entry_zip(tmp_path / "entries.xlsx").read_bytes()
    response = post(client_for(CHECK_SECONDS=30), [("book.xlsx", entries)], slug="spreadsheet")
    assert response.status_code == 400
    assert "“book.xlsx” was refused:" in response.text


@pytest.mark.parametrize("hx", [False, True])
def test_a_form_error_keeps_what_was_chosen(store, hx):
    headers = {"HX-Request": "true"} if hx else None
    response = post(
        client_for(),
        [("ok.txt", b"fine\n")],
        slug="lines",
        headers=headers,
        steps="0",
        delay="0.5",
        fail_at="-1",
    )
    assert response.status_code == 400
    if hx:  # only the message region: the page keeps its form, files and all
        assert response.headers["HX-Retarget"] == "#form-feedback"
        assert response.headers["HX-Reswap"] == "outerHTML"
        assert response.text.startswith('<div id="form-feedback"')
        assert "Steps: Number must be between 1 and 10000." in response.text
        assert 'id="job-form"' not in response.text
    else:  # the whole form again, filled in, with what to fix next to the field
        assert 'value="0.5"' in response.text and 'id="job-form"' in response.text
        assert "Number must be between 1 and 10000." in response.text
    assert "Please correct the highlighted fields." in response.text
