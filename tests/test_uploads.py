"""Uploads and hostile input: each gets a precise answer, and nothing else changes."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import pytest

from app import create_app
from headway.limits import HOLDERS
from headway.web.uploads import safe_name

from .upload_helpers import post_form

OWNER = "owner-up"


@pytest.fixture
def web():
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False})
    client = app.test_client()
    with client.session_transaction() as session:
        session["owner"] = OWNER
    return client


def snapshot(store) -> tuple:
    """Everything a refused request must leave as it was: keys, queue, files on disk (but
    the entry that says the web process lives, which its first upload slot made)."""
    jobs_dir = store.settings.jobs_dir
    files = sorted(str(p) for p in jobs_dir.rglob("*")) if jobs_dir.exists() else []
    return sorted(set(store.client.keys("*")) - {HOLDERS}), files


def post(web, slug="lines", files=(), headers=None, **fields):
    fields = {"steps": "3", "delay": "0", "fail_at": "-1", **fields}
    return post_form(web, slug, files, headers, **fields)


def refused(web, store, expected_status, expected_text, **kwargs):
    before = snapshot(store)
    response = post(web, **kwargs)
    assert response.status_code == expected_status
    page = response.get_data(as_text=True)
    assert expected_text in page, page[:2000]
    assert snapshot(store) == before
    return page


def test_valid_upload_creates_the_job_and_redirects_to_its_page(web, store):
    response = post(web, files=[("a.txt", b"one\ntwo\n"), ("b.txt", b"x\n")])
    assert response.status_code == 303
    job_id = re.fullmatch(r"/jobs/([0-9a-f]{32})", response.headers["Location"]).group(1)
    job = store.get(job_id)
    assert job.status == "queued" and job.owner == OWNER
    assert job.inputs == ["a.txt", "b.txt"] and job.title == "Count lines: a.txt and 1 more"
    assert (store.job_dir(job_id) / "input" / "a.txt").read_bytes() == b"one\ntwo\n"
    assert not list((store.settings.instance_path / "uploads").iterdir())  # spool cleaned


def test_htmx_upload_gets_the_htmx_redirect(web, store):
    response = web.post(
        "/jobs/new/lines",
        headers={"HX-Request": "true"},
        data={
            "steps": "3",
            "delay": "0",
            "fail_at": "-1",
            "files": [(io.BytesIO(b"hi\n"), "a.txt")],
        },
        content_type="multipart/form-data",
    )
    assert response.status_code == 200
    assert re.fullmatch(r"/jobs/[0-9a-f]{32}", response.headers["HX-Redirect"])


def test_zero_files(web, store):
    refused(web, store, 400, "Choose at least 1 file.")


def test_too_many_files(web, store):
    files = [(f"{i}.txt", b"x\n") for i in range(4)]
    refused(
        web,
        store,
        400,
        "Too many files: more than 3 chosen, Count lines takes at most 3.",
        files=files,
    )


def test_empty_file(web, store):
    refused(web, store, 400, "“b.txt” is empty.", files=[("a.txt", b"x"), ("b.txt", b"")])


def test_content_not_matching_the_accepted_type_is_refused_by_name(web, store):
    png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(64)
    refused(
        web,
        store,
        400,
        "“notes.txt” was refused: is not a text file.",
        files=[("ok.txt", b"fine\n"), ("notes.txt", png)],
    )


def test_kind_total_size_limit_is_413_with_explanation(web, store):
    big = b"x" * 600_000
    refused(
        web,
        store,
        413,
        "The files add up to more than 1.0 MB, the most Count lines takes.",
        files=[("a.txt", big), ("b.txt", big)],
    )


def test_request_over_the_kind_limit_is_refused_before_reading_it(store):
    client = create_app({"TESTING": True}).test_client()  # with CSRF, which reads forms
    body = b"x" * 2_100_000  # never parsed: the declared length is enough to refuse it
    before = snapshot(store)
    response = client.post(
        "/jobs/new/lines",
        input_stream=io.BytesIO(body),
        content_length=len(body),
        content_type="multipart/form-data; boundary=b",
    )
    assert response.status_code == 413
    assert "The upload is larger than 1.0 MB, the most Count lines takes." in response.text
    assert snapshot(store) == before


def test_request_over_the_global_limit_is_413(store):
    app = create_app({"TESTING": True, "WTF_CSRF_ENABLED": False, "MAX_UPLOAD_BYTES": 1000})
    client = app.test_client()
    before = snapshot(store)
    response = client.post(
        "/jobs/new/steps",
        data={"files": [(io.BytesIO(b"x" * 5000), "a")]},
        content_type="multipart/form-data",
    )
    assert response.status_code == 413
    assert "the most this server accepts" in response.get_data(as_text=True)
    assert snapshot(store) == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", "0", "Number must be between 1 and 10000."),
        ("steps", "many", "Not a valid integer value."),
        ("delay", "1e999", "Number must be between 0 and 10."),
        ("delay", "", "Not a valid float value."),
    ],
)
def test_form_fields_out_of_range_or_of_the_wrong_type(web, store, field, value, message):
    page = refused(
        web,
        store,
        400,
        "Please correct the highlighted fields.",
        files=[("a.txt", b"x\n")],
        **{field: value},
    )
    assert message in page


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("../../etc/passwd", "passwd"),
        ("/etc/shadow", "shadow"),
        ("evil\0name.txt", "evilname.txt"),
        ("....", "file-1"),
        ("über café.txt", "über café.txt"),
        ("a" * 10_000 + ".txt", "a" * 116 + ".txt"),
    ],
)
def test_hostile_file_names_are_made_safe(web, store, raw, stored):
    response = post(web, files=[(raw, b"text\n")])
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    assert store.get(job_id).inputs == [stored]
    inputs = store.job_dir(job_id) / "input"
    assert [p.name for p in inputs.iterdir()] == [stored]
    assert (inputs / stored).resolve().parent == inputs.resolve()


def test_same_name_twice_keeps_both_files(web, store):
    response = post(web, files=[("a.txt", b"1\n"), ("a.txt", b"2\n")])
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    assert store.get(job_id).inputs == ["a.txt", "a (2).txt"]


def test_unknown_kind_is_404(web):
    assert web.get("/jobs/new/nope").status_code == 404
    assert web.post("/jobs/new/nope").status_code == 404


def test_the_form_renders_fields_with_defaults(web):
    page = web.get("/jobs/new/steps").get_data(as_text=True)
    assert 'name="files"' in page and "multiple" in page
    assert 'name="steps"' in page and 'value="10"' in page
    assert 'id="upload-progress"' in page


def test_upload_spools_to_disk_not_memory(web, store, tmp_path: Path):
    """Files reach the job folder through the on-disk spool (a hard link, not a copy)."""
    response = post(web, files=[("a.txt", b"line\n" * 1000)])
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    saved = store.job_dir(job_id) / "input" / "a.txt"
    assert os.stat(saved).st_size == 5000


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("C:\\Users\\me\\..\\win.ini", "win.ini"),
        ("a/../../b.txt", "b.txt"),
        ("\x00\x1b[31mred.txt", "[31mred.txt"),
        ("  spaced   out .txt  ", "spaced out .txt"),
        ("", "file-3"),
        ("x." + "e" * 40, "x." + "e" * 16),
    ],
)
def test_safe_name(raw, safe):
    assert safe_name(raw, 2) == safe


# -- the shipped kinds behind the form ---------------------------------------------------------


def test_image_decompression_bomb_is_refused_at_upload(web, store, tmp_path):
    from .test_kind_images import png_header_only

    bomb = png_header_only(tmp_path / "bomb.png", 30_000, 30_000).read_bytes()
    refused(
        web,
        store,
        400,
        "“bomb.png” was refused: is too large (the limit is 64 megapixels).",
        slug="images",
        files=[("bomb.png", bomb)],
    )


def test_name_claiming_an_image_with_other_bytes_is_refused(web, store):
    refused(
        web,
        store,
        400,
        "“photo.jpg” was refused: is not an image (JPEG, PNG, WebP, GIF or TIFF).",
        slug="images",
        files=[("photo.jpg", b"just some text, not a JPEG\n")],
    )


def test_non_utf8_mixed_encoding_csv_with_a_50_mb_line_is_processed(web, store, consumer):
    from .conftest import wait_for

    rows = "id;name\n1;Müller\n".encode("cp1252")  # cp1252 ...
    rows += "2;Straße\n".encode()  # ... and a UTF-8 line in the same file
    rows += b"3;" + b"x" * (50 * 1024 * 1024) + b"\n"  # one line of 50 MB
    rows += "4;Zoë\n".encode("cp1252")
    response = post(web, slug="spreadsheet", files=[("mixed.csv", rows)], output_format="csv")
    assert response.status_code == 303, response.text[:500]
    job_id = response.headers["Location"].rsplit("/", 1)[1]
    job = wait_for(lambda: (j := store.get(job_id)) and j.finished and j, timeout=120)
    assert job.status == "succeeded", job.error
    output = store.job_dir(job_id) / "output"
    report = (output / "mixed.report.html").read_text()
    assert "has a line longer than 10 MiB characters" in report
    converted = (output / "mixed.csv").read_text(encoding="utf-8")
    assert "Müller" in converted and "Zoë" in converted


def test_a_huge_name_is_cut_in_one_step_on_a_character_boundary():
    name = safe_name("é" * 150_000 + ".txt", 0)
    assert name == "é" * 58 + ".txt"  # 116 + 4 bytes: 120 at most, no half character
    assert len(name.encode()) <= 120
