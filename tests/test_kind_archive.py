"""The archive kind: files packed with a SHA256SUMS that `sha256sum -c` accepts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import psutil
import pytest

from jobs import control
from jobs.kinds import archive

from .conftest import wait_for
from .kind_helpers import log_messages, result_names, run_files, submit_files, wait_final

BIG_MB = 300


@pytest.fixture
def small_files(tmp_path) -> list[Path]:
    folder = tmp_path / "small"
    folder.mkdir()
    contents = {
        "report.txt": b"Quarterly report\n" * 500,
        "data.bin": os.urandom(200_000),
        "empty.dat": b"",
        "SHA256SUMS": b"an input that happens to share the name of ours\n",
        "my file (1).txt": "spaces and ünïcode\n".encode(),
        "Notes.txt": b"upper\n",
        "notes.txt": b"lower\n",
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in contents]


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:
    """A few hundred MB of random bytes, written once in 1 MiB chunks."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    with path.open("wb") as file:
        for _ in range(BIG_MB):
            file.write(os.urandom(1024 * 1024))
    return path


def extract(archive_path: Path, target: Path) -> Path:
    target.mkdir()
    if archive_path.name.endswith(".zip"):
        with zipfile.ZipFile(archive_path) as packed:
            packed.extractall(target)
    else:
        with tarfile.open(archive_path) as packed:
            packed.extractall(target, filter="data")
    return target


def sha256sum_check(folder: Path) -> list[str]:
    """Run the real `sha256sum -c SHA256SUMS` in `folder`; returns its lines (it must pass)."""
    done = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=folder, capture_output=True)
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    return done.stdout.decode().removesuffix("\n").split("\n")  # a name may hold a \r


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize("archive_format", ["zip", "tar.gz"])
def test_packs_files_with_checksums_that_sha256sum_accepts(
    store, consumer, small_files, tmp_path, archive_format
):
    job, output = run_files(store, "archive", small_files, archive_format=archive_format)

    assert job.status == "succeeded", job.error
    assert result_names(job) == ["SHA256SUMS", f"archive.{archive_format}"]
    assert job.total == job.done == 1  # the last stage: "Finishing"
    assert [item.status for item in store.items(job.id)] == ["done"] * len(small_files)

    folder = extract(output / f"archive.{archive_format}", tmp_path / "extracted")
    stored_as = {path.name: path.name for path in small_files}
    stored_as.update({"SHA256SUMS": "SHA256SUMS-2", "notes.txt": "notes-2.txt"})
    assert sorted(p.name for p in folder.iterdir()) == sorted([*stored_as.values(), "SHA256SUMS"])
    for path in small_files:
        assert (folder / stored_as[path.name]).read_bytes() == path.read_bytes()
    assert sorted(sha256sum_check(folder)) == sorted(f"{name}: OK" for name in stored_as.values())
    assert (folder / "SHA256SUMS").read_bytes() == (output / "SHA256SUMS").read_bytes()
    assert (output / "SHA256SUMS").read_text().splitlines()[0] == (
        f"{sha256(small_files[0])}  report.txt"
    )
    warnings = log_messages(store, job.id, "warning")
    assert "SHA256SUMS is stored as SHA256SUMS-2 (the name was taken)" in warnings
    assert "notes.txt is stored as notes-2.txt (the name was taken)" in warnings


def test_sums_line_escapes_names_like_coreutils(tmp_path):
    names = ["plain.txt", "back\\slash", "new\nline", "carriage\rreturn"]
    for name in names:
        (tmp_path / name).write_bytes(name.encode())
    listing = "".join(archive.sums_line(sha256(tmp_path / name), name) for name in names)
    (tmp_path / "SHA256SUMS").write_text(listing)
    assert len(sha256sum_check(tmp_path)) == len(names)
    assert listing.splitlines()[0] == f"{sha256(tmp_path / 'plain.txt')}  plain.txt"


def test_big_file_streams_with_bounded_memory(store, consumer, big_file, small_files, tmp_path):
    inputs = [big_file, small_files[0]]
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.wait(0.01):
            peak = max(peak, process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        job, output = run_files(store, "archive", inputs, archive_format="zip")
    finally:
        stop.set()
        sampler.join()

    assert job.status == "succeeded", job.error
    growth_mb = (peak - baseline) / 1024**2
    print(f"packing {BIG_MB} MB: RSS {baseline / 1024**2:.0f} MB before, peak +{growth_mb:.1f} MB")
    assert growth_mb < 64, f"memory grew by {growth_mb:.0f} MB while packing {BIG_MB} MB"

    with zipfile.ZipFile(output / "archive.zip") as packed:
        methods = {info.filename: info.compress_type for info in packed.infolist()}
    assert methods == {
        "big.bin": zipfile.ZIP_STORED,  # random bytes do not deflate: stored as they are
        "report.txt": zipfile.ZIP_DEFLATED,
        "SHA256SUMS": zipfile.ZIP_DEFLATED,
    }
    folder = extract(output / "archive.zip", tmp_path / "extracted")
    assert sorted(sha256sum_check(folder)) == ["big.bin: OK", "report.txt: OK"]
    assert (output / "SHA256SUMS").read_text().startswith(f"{sha256(big_file)}  big.bin\n")


def test_cancel_stops_packing_a_big_file(store, consumer, big_file):
    # tar.gz must compress every byte, so packing takes several seconds: time to cancel
    job_id = submit_files(store, "archive", [big_file], archive_format="tar.gz")
    wait_for(lambda: store.get(job_id).done >= 2 * archive.CHUNK, timeout=30)
    assert control.cancel(store.get(job_id))
    job = wait_final(store, job_id)
    assert job.status == "cancelled"
    assert job.stage == "Packing" and job.done < job.total
    assert job.files == []
