"""Checksum files and pack them into one zip or tar.gz archive.

The archive holds the files plus a `SHA256SUMS` in the exact format of `sha256sum`, so that
after extracting it `sha256sum -c SHA256SUMS` checks every file. `SHA256SUMS` is also a result
of its own, to check a download against. Each file is read once, in chunks: hashing and
packing happen in the same pass, and memory stays flat whatever the file sizes.
"""

from __future__ import annotations

import hashlib
import io
import stat
import tarfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import wtforms

from jobs.kinds import JobContext, JobKind
from jobs.kinds._common import UniqueNames, read_options
from jobs.reporter import ProgressReporter

CHUNK = 1024 * 1024  # read size: big enough to be fast, small enough to notice a cancel soon
SUMS_NAME = "SHA256SUMS"
# Above this size, write zip64 records from the start: a zip entry cannot switch to them once
# written, and the size zipfile would go by is the one stat gave before reading.
ZIP64_FROM = 1024**3
# A file whose first chunk deflates to more than this fraction of its size is stored as is:
# photos, videos and archives do not shrink, and deflating them is the slow part of packing.
STORE_ABOVE_RATIO = 0.95
REGULAR_FILE = (stat.S_IFREG | 0o644) << 16  # zip's external_attr for an ordinary file


class ArchiveOptions(wtforms.Form):
    archive_format = wtforms.SelectField(
        "Archive format",
        default="zip",
        choices=[wtforms.SelectChoice("zip", "zip"), wtforms.SelectChoice("tar.gz", "tar.gz")],
    )


def pack_files(ctx: JobContext) -> None:
    options = read_options(ArchiveOptions, ctx.params)
    reporter = ctx.reporter
    # An input called SHA256SUMS must not overwrite ours; equal names differing only in
    # case would overwrite each other when extracted on Windows or macOS.
    names = UniqueNames(reserved=(SUMS_NAME,))
    entries = [(path, names.take(path.name)) for path in ctx.inputs]
    for path, name in entries:
        if name != path.name:
            reporter.log(f"{path.name} is stored as {name} (the name was taken)", "warning")

    reporter.stage("Packing", total=sum(path.stat().st_size for path in ctx.inputs))
    archive_path = ctx.output(f"archive.{options['archive_format']}")
    writer = (ZipWriter if options["archive_format"] == "zip" else TarWriter)(archive_path)
    sums = []
    with writer:
        for index, (path, name) in enumerate(entries):
            reporter.item(index, name, 0)
            on_chunk = chunk_reporter(reporter, index, name, path.stat().st_size)
            sums.append((writer.add(path, name, on_chunk), name))
            reporter.item(index, name, 100, "done")

        reporter.stage("Finishing", total=1)
        listing = "".join(sums_line(digest, name) for digest, name in sums).encode()
        writer.add_bytes(SUMS_NAME, listing)
    ctx.output(SUMS_NAME).write_bytes(listing)
    reporter.advance()
    reporter.log(f"Packed {len(entries)} files into {archive_path.name}")


def chunk_reporter(
    reporter: ProgressReporter, index: int, name: str, size: int
) -> Callable[[int], None]:
    """A callback for each chunk of one file: counts its bytes, moves its bar, honours a cancel."""
    done = 0

    def on_chunk(length: int) -> None:
        nonlocal done
        done += length
        reporter.advance(length, current=name)
        reporter.item(index, name, 100.0 * done / size if size else 100.0)
        reporter.check()

    return on_chunk


def sums_line(digest: str, name: str) -> str:
    """One line of `sha256sum` output; like coreutils, escape a name with \\, \\n or \\r."""
    if any(c in name for c in "\\\n\r"):
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        return f"\\{digest}  {escaped}\n"
    return f"{digest}  {name}\n"


def copy_hashing(
    path: Path, write: Callable[[memoryview], object], on_chunk: Callable[[int], None]
) -> str:
    """Stream a file to `write` in chunks; returns the SHA-256 of exactly what was written."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb") as source:
        while length := source.readinto(buffer):
            chunk = view[:length]
            digest.update(chunk)
            write(chunk)
            on_chunk(length)
    return digest.hexdigest()


def compresses(path: Path) -> bool:
    """Whether deflating the file is worth it, judged by its first chunk."""
    with path.open("rb") as source:
        sample = source.read(64 * 1024)
    return len(zlib.compress(sample, 1)) < STORE_ABOVE_RATIO * len(sample) if sample else True


class ZipWriter:
    """Writes entries into a zip as they are read; large files get zip64 records."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, "w")  # the method is chosen per entry

    def __enter__(self) -> ZipWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.zip.close()

    def add(self, path: Path, name: str, on_chunk: Callable[[int], None]) -> str:
        info = zipfile.ZipInfo.from_file(path, name, strict_timestamps=False)
        info.compress_type = zipfile.ZIP_DEFLATED if compresses(path) else zipfile.ZIP_STORED
        info.external_attr = REGULAR_FILE  # readable by all, whatever mode the upload had
        with self.zip.open(info, "w", force_zip64=info.file_size > ZIP64_FROM) as target:
            return copy_hashing(path, target.write, on_chunk)

    def add_bytes(self, name: str, data: bytes) -> None:
        info = zipfile.ZipInfo(name, time.localtime()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = REGULAR_FILE
        self.zip.writestr(info, data)


class TarWriter:
    """Writes entries into a gzip-compressed tar as they are read."""

    def __init__(self, path: Path):
        self.tar = tarfile.open(  # noqa: SIM115 (closed by __exit__)
            path, "w:gz", compresslevel=6, format=tarfile.PAX_FORMAT, copybufsize=CHUNK
        )

    def __enter__(self) -> TarWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.tar.close()

    def add(self, path: Path, name: str, on_chunk: Callable[[int], None]) -> str:
        status = path.stat()
        reader = HashingReader(path, on_chunk)
        try:
            self.tar.addfile(self._info(name, status.st_size, status.st_mtime), reader)
        finally:
            reader.close()
        return reader.digest.hexdigest()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.tar.addfile(self._info(name, len(data), time.time()), io.BytesIO(data))

    @staticmethod
    def _info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
        # No owner names or ids: they describe the server, not the files.
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, int(mtime), 0o644
        return info


class HashingReader:
    """A file object for tarfile to read from, hashing and reporting every chunk it hands out."""

    def __init__(self, path: Path, on_chunk: Callable[[int], None]):
        self.file = path.open("rb")
        self.digest = hashlib.sha256()
        self.on_chunk = on_chunk

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size if size > 0 else CHUNK)  # tarfile asks for CHUNK at most
        self.digest.update(data)
        if data:
            self.on_chunk(len(data))
        return data

    def close(self) -> None:
        self.file.close()


KIND = JobKind(
    slug="archive",
    title="Checksum and pack files",
    description="Packs files into one zip or tar.gz, with a SHA256SUMS file to check them by.",
    work=pack_files,
    options=ArchiveOptions,
    check_file=None,  # any file can be packed
    accept="",
    accept_label="any files",
    max_files=500,
    max_total_bytes=4 * 1024**3,
    stages=(("Packing", 49), ("Finishing", 1)),
    rate_unit="bytes",
    retry_items=True,
)
