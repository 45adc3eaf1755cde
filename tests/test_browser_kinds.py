"""Each shipped job kind, from its form to its downloads, in a real headless Chromium.

A person chooses real files, picks an option, presses Start, watches the job end on its
page, clicks every download link and opens what arrives: the converted images, the table
reports and data, the archive that `sha256sum -c` checks. Also what they see while a large
upload goes out (the upload bar) and when a disguised file is refused (a message in place).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import zipfile
from pathlib import Path

import openpyxl
import pytest
from PIL import Image

from jobs.kinds import images

from .browser_support import (
    JOB_URL,
    KEEPALIVE_SECONDS,
    WAIT_MS,
    job_id_of,
    seen,
    throttle_uploads,
)
from .test_kind_images import truncated_jpeg
from .test_kind_spreadsheet import Report

pytestmark = pytest.mark.browser

# Loopback takes 30 MB in a blink; at this rate the upload lasts about 1.5 s.
UPLOAD_BYTES_PER_SECOND = 20 * 1024 * 1024
SHOWS_FINAL = (
    "() => ['succeeded', 'failed', 'cancelled', 'interrupted']"
    ".includes(document.querySelector('#job-progress')?.dataset.status)"
)

# Installed in every document: each change of the upload bar, with whether it could be seen,
# kept in sessionStorage because the page moves on to the job page once the upload is done.
UPLOAD_RECORDER_JS = """
(() => {
  const record = (entry) => {
    const all = JSON.parse(sessionStorage.getItem("uploadBar") || "[]");
    all.push(entry);
    sessionStorage.setItem("uploadBar", JSON.stringify(all));
  };
  new MutationObserver((mutations) => {
    for (const m of mutations) {
      const box = m.target.closest && m.target.closest("#upload-progress");
      if (box && m.attributeName === "aria-valuenow") {
        record({ value: Number(m.target.getAttribute("aria-valuenow")),
                 visible: box.checkVisibility() });
      }
    }
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["aria-valuenow"] });
})();
"""


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(live_servers):
    """A live server with slow keepalives (as in test_browser.py)."""
    return live_servers(HEADWAY_KEEPALIVE_SECONDS=KEEPALIVE_SECONDS)


@pytest.fixture
def context(new_context):
    """A context that accepts downloads and also records the upload bar."""
    context = new_context(accept_downloads=True)
    context.add_init_script(UPLOAD_RECORDER_JS)
    return context


# --- helpers -------------------------------------------------------------------------------


def fill_form(page, base: str, slug: str, files: list[Path], **choices: str) -> None:
    """Open the kind's form, choose the files and set the options (fields by id)."""
    page.goto(f"{base}/jobs/new/{slug}")
    page.set_input_files("#job-form input[type=file]", [str(path) for path in files])
    for field, value in choices.items():
        if page.locator(f"#{field}").evaluate("el => el.tagName") == "SELECT":
            page.select_option(f"#{field}", value)
        else:
            page.fill(f"#{field}", value)


def press_start(page) -> str:
    """Press Start and land on the job page; returns the job id."""
    page.click("#job-form button[type=submit]")
    page.wait_for_url(JOB_URL, timeout=WAIT_MS * 2)
    return job_id_of(page.url)


def submit_form(page, base: str, slug: str, files: list[Path], **choices: str) -> str:
    fill_form(page, base, slug, files, **choices)
    return press_start(page)


def wait_succeeded(page) -> None:
    """Until the page shows a final state, which must be success with download links."""
    page.wait_for_function(SHOWS_FINAL, timeout=WAIT_MS * 2)
    status = page.locator("#job-status").inner_text()
    error = page.locator("#job-error").all_inner_texts()
    assert status == "succeeded", f"the job ended {status}: {error}"
    values = [s["value"] for s in seen(page)]
    assert values == sorted(values) and values[-1] == 100, values


def download_every_link(page, folder: Path) -> dict[str, Path]:
    """Click each download link in turn, as a person would; the files that arrived, by name."""
    folder.mkdir()
    links = page.locator("#downloads a")
    assert links.count() >= 1, "no download links"
    arrived = {}
    for index in range(links.count()):
        with page.expect_download() as info:
            links.nth(index).click()
        download = info.value
        assert download.failure() is None, download.failure()
        name = download.suggested_filename
        assert name not in arrived, f"two links gave {name}"
        arrived[name] = folder / name
        download.save_as(arrived[name])
    return arrived


def link_texts(page) -> list[str]:
    return [text.strip() for text in page.locator("#downloads a").all_inner_texts()]


def bundle_of(arrived: dict[str, Path]) -> Path:
    """The "Download all" zip: the one download named after the job, not after a result."""
    (bundle,) = [path for name, path in arrived.items() if name.startswith("headway-")]
    return bundle


def assert_bundle_holds(bundle: Path, results: dict[str, Path]) -> None:
    with zipfile.ZipFile(bundle) as packed:
        assert sorted(packed.namelist()) == sorted(results)
        for name, path in results.items():
            assert packed.read(name) == path.read_bytes(), name


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def job_keys(store) -> list[bytes]:
    return list(store.client.scan_iter("hw:job:*"))


# --- input files ---------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (640, 480), "red").save(folder / "red.jpg", "JPEG", quality=90)
    Image.new("RGBA", (800, 200), (0, 0, 255, 128)).save(folder / "wide.png")
    Image.new("L", (40, 30), 128).save(folder / "small.png")
    return [
        folder / "red.jpg",
        folder / "wide.png",
        folder / "small.png",
        truncated_jpeg(folder / "broken.jpg"),
    ]


# cp1252 with ";" and decimal commas; line 4 is short of a field.
SHOP_LINES = [
    "id;name;amount;city",
    "1;Zoë;12,5;Zürich",
    "2;Renée;;Köln",
    "3;broken;row",
    "4;José Müller;-3;Besançon",
    "5;Øyvind €;0,25;Zürich",
]


@pytest.fixture
def tables(tmp_path) -> list[Path]:
    folder = tmp_path / "tables"
    folder.mkdir()
    shop = folder / "shop.csv"
    shop.write_bytes("\r\n".join(SHOP_LINES).encode("cp1252") + b"\r\n")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["product", "qty", "price"])
    sheet.append(["Tea", 3, 4.5])
    sheet.append(["Coffee", 10, 12.25])
    sheet.append(["Cake", None, 2.0])
    book.save(folder / "sales.xlsx")
    return [shop, folder / "sales.xlsx"]


@pytest.fixture
def loose_files(tmp_path) -> list[Path]:
    """A few files for the archive, one of them large enough for the upload bar to show."""
    folder = tmp_path / "loose"
    folder.mkdir()
    contents = {
        "notes.txt": b"Quarterly notes\n" * 200,
        "my file (ünïcode).txt": "spaces and ünïcode\n".encode(),
        "data.bin": os.urandom(100_000),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    with (folder / "big.bin").open("wb") as big:
        for _ in range(30):
            big.write(os.urandom(1024 * 1024))
    return [folder / name for name in (*contents, "big.bin")]


# --- tests ---------------------------------------------------------------------------------


def test_images_from_form_to_opened_results(live_server, page, photos, tmp_path):
    submit_form(
        page,
        live_server.url,
        "images",
        photos,
        max_width="200",
        max_height="200",
        output_format="png",
    )
    wait_succeeded(page)

    assert page.locator("#job-failed").inner_text() == "1"
    assert "broken.jpg: skipped" in page.locator("#job-log").inner_text()
    assert link_texts(page) == ["contact-sheet.jpg", "images.zip", "Download all (zip)"]
    arrived = download_every_link(page, tmp_path / "downloads")

    with zipfile.ZipFile(arrived["images.zip"]) as packed:
        assert sorted(packed.namelist()) == ["red.png", "small.png", "wide.png"]
        sizes = {}
        for name in packed.namelist():
            with Image.open(io.BytesIO(packed.read(name))) as image:
                assert image.format == "PNG", name
                sizes[name] = image.size
    assert sizes == {"red.png": (200, 150), "wide.png": (200, 50), "small.png": (40, 30)}
    with Image.open(arrived["contact-sheet.jpg"]) as sheet:
        assert sheet.format == "JPEG"
        # four cells, two by two: the broken image keeps its cell
        assert sheet.size == (2 * images.CELL_W, 2 * images.CELL_H)
    assert_bundle_holds(
        bundle_of(arrived), {name: arrived[name] for name in ("images.zip", "contact-sheet.jpg")}
    )


def test_spreadsheet_from_form_to_opened_reports(live_server, page, tables, tmp_path):
    submit_form(page, live_server.url, "spreadsheet", tables, output_format="jsonl")
    wait_succeeded(page)

    results = ["sales.jsonl", "sales.report.html", "shop.jsonl", "shop.report.html"]
    assert link_texts(page) == [*results, "Download all (zip)"]
    assert "shop.csv: 4 rows, 4 columns, 1 malformed" in page.locator("#job-log").inner_text()
    arrived = download_every_link(page, tmp_path / "downloads")

    shop = Report(arrived["shop.report.html"])
    assert shop.count("Rows") == 4
    assert shop.count("Malformed rows") == 1
    assert shop.malformed == [("4", "has 3 fields, expected 4")]
    assert "encoding cp1252, delimiter ;" in shop.html
    rows = [json.loads(line) for line in arrived["shop.jsonl"].read_text("utf-8").splitlines()]
    assert [row["name"] for row in rows] == ["Zoë", "Renée", "José Müller", "Øyvind €"]
    assert [row["amount"] for row in rows] == [12.5, None, -3, 0.25]

    sales = Report(arrived["sales.report.html"])
    assert sales.count("Rows") == 3 and sales.malformed == []
    rows = [json.loads(line) for line in arrived["sales.jsonl"].read_text("utf-8").splitlines()]
    assert rows == [
        {"product": "Tea", "qty": 3, "price": 4.5},
        {"product": "Coffee", "qty": 10, "price": 12.25},
        {"product": "Cake", "qty": None, "price": 2.0},
    ]
    assert_bundle_holds(bundle_of(arrived), {name: arrived[name] for name in results})


def test_archive_upload_bar_then_checked_archive(live_server, page, loose_files, tmp_path):
    throttle_uploads(page, UPLOAD_BYTES_PER_SECOND)
    fill_form(page, live_server.url, "archive", loose_files, archive_format="tar.gz")
    assert page.locator("#upload-progress").is_hidden()
    press_start(page)

    # The upload bar showed while the 30 MB went out, and only ever moved forward.
    bar = page.evaluate("JSON.parse(sessionStorage.getItem('uploadBar') || '[]')")
    assert bar, "the upload bar never changed"
    assert all(entry["visible"] for entry in bar), bar
    values = [entry["value"] for entry in bar]
    assert values == sorted(values), values
    assert values[-1] == 100, values
    assert len([value for value in values if 0 < value < 100]) >= 3, values

    wait_succeeded(page)
    assert link_texts(page) == ["SHA256SUMS", "archive.tar.gz", "Download all (zip)"]
    arrived = download_every_link(page, tmp_path / "downloads")

    extracted = tmp_path / "extracted"
    with tarfile.open(arrived["archive.tar.gz"]) as packed:
        packed.extractall(extracted, filter="data")
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=extracted, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert sorted(check.stdout.splitlines()) == sorted(f"{p.name}: OK" for p in loose_files)
    for path in loose_files:
        assert sha256(extracted / path.name) == sha256(path), path.name
    assert arrived["SHA256SUMS"].read_bytes() == (extracted / "SHA256SUMS").read_bytes()
    assert_bundle_holds(
        bundle_of(arrived), {name: arrived[name] for name in ("archive.tar.gz", "SHA256SUMS")}
    )


def test_disguised_file_is_refused_in_place_and_nothing_is_lost(
    live_server, page, photos, store, tmp_path
):
    base = live_server.url
    disguised = tmp_path / "photo.jpg"
    disguised.write_text("not a photo at all, only words\n")
    documents = []
    page.on("request", lambda r: r.resource_type == "document" and documents.append(r.url))
    page.goto(f"{base}/jobs/new/images")
    page.evaluate("window.__marker = 'loaded once'")
    page.fill("#max_width", "300")
    page.select_option("#output_format", "webp")
    page.set_input_files("#job-form input[type=file]", [str(photos[0]), str(disguised)])
    with page.expect_response(f"{base}/jobs/new/images") as answer:
        page.click("#job-form button[type=submit]")

    assert answer.value.status == 400
    error = page.locator("#form-error")
    error.wait_for()
    assert error.inner_text() == (
        "“photo.jpg” was refused: is not an image (JPEG, PNG, WebP, GIF or TIFF)."
    )
    # In place: the same document, the same address, nothing reloaded.
    assert page.url == f"{base}/jobs/new/images"
    assert page.evaluate("window.__marker") == "loaded once"
    assert documents == [f"{base}/jobs/new/images"]
    # Nothing lost: the choices are still there, and no job or file was left behind.
    assert page.locator("#max_width").input_value() == "300"
    assert page.locator("#output_format").input_value() == "webp"
    assert job_keys(store) == []
    jobs_dir = store.settings.jobs_dir
    assert not jobs_dir.exists() or list(jobs_dir.iterdir()) == []

    # The person removes the refused file from the list and tries again, from the same form.
    assert page.locator("#job-form button[type=submit]").is_enabled()
    page.get_by_role("button", name="Remove photo.jpg").click()
    page.click("#job-form button[type=submit]")
    page.wait_for_url(JOB_URL)
    wait_succeeded(page)
    assert link_texts(page) == ["contact-sheet.jpg", "images.zip", "Download all (zip)"]
