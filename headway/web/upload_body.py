"""Reading an upload's multipart body as it streams in, with every limit enforced on the way.

Werkzeug's form parser reads a whole body before the view sees any of it, so a CSRF token,
a file count or a size limit could only be judged once everything was on disk. Here the
sans-IO `MultipartDecoder` is driven over the request stream by hand:
- the CSRF token (header, or the form's `csrf_token` field, which comes before the file
  input) is checked before the first byte of a file is spooled;
- the kind's file count and total size stop the read the moment they are crossed,
  chunked body or not;
- parts, form fields and buffered headers are capped;
- a body slower than the floor rate (bytes over the last window) is ended with 408;
- on any refusal every file is aborted at once (spool files removed, multipart uploads
  aborted): nothing of a refused upload stays, on this node or in the storage.
Each file goes into storage as it arrives (headway/storage.py: an `ObjectUpload`), through
a spool on this node's disk: the whole file for the local backend (hard-linked to its place
on commit), one part at a time for S3. Spool files are named after their host and process,
so that those of a crashed process can be told from those of live uploads and swept.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    Preamble,
)

from headway.storage import HOST, ObjectUpload, StorageError
from headway.web.format import filesize

log = logging.getLogger("headway.uploads")

CHUNK = 256 * 1024
MAX_FORM_PARTS = 100  # parts other than chosen files: form fields, an empty file input
MAX_FIELD_BYTES = 64 * 1024
MAX_FORM_BYTES = 1024 * 1024
MAX_BUFFERED = 256 * 1024  # part headers and preamble waiting for their end
FOREIGN_SPOOL_MAX_AGE = 24 * 3600  # spool files of other hosts, or of unknown origin


class Refused(Exception):
    """An upload refused with a message for the person and an HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        retry_after: int | None = None,
        problems: list[str] | tuple[str, ...] = (),
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.problems = list(problems)  # what to fix, field by field
        self.fields: MultiDict | None = None


@dataclasses.dataclass
class SpooledFile:
    """One uploaded file on its way into storage, under the name it will have there."""

    filename: str  # as the client sent it
    name: str  # safe and unique among the job's inputs
    target: ObjectUpload
    committed: bool = False

    @property
    def size(self) -> int:
        return self.target.size

    @property
    def path(self) -> Path | None:
        """The whole file on this node while its content check needs it."""
        return self.target.local_path

    def write(self, data: bytes) -> None:
        try:
            self.target.write(data)
        except (StorageError, OSError) as exc:
            log.error("could not store %s: %s", self.target.key, exc)
            raise storage_unavailable() from None

    def commit(self) -> None:
        self.target.commit()
        self.committed = True

    def discard(self) -> None:
        if not self.committed:
            self.target.abort()


def storage_unavailable() -> Refused:
    return Refused(
        "The server cannot store uploads right now; try again in a moment.", 503, retry_after=5
    )


@dataclasses.dataclass
class Upload:
    fields: MultiDict
    files: list[SpooledFile]

    def discard(self) -> None:
        """Abort every file not yet committed: nothing of it stays anywhere."""
        for f in self.files:
            try:
                f.discard()
            except Exception:
                log.exception("could not discard the upload of %s", f.name)


class Spool:
    """The folder on this node that uploads pass through on their way into storage."""

    SWEEP_EVERY = 300.0

    def __init__(self, directory: Path):
        self.directory = directory
        self.swept_at = 0.0

    def sweep(self) -> int:
        """Remove spool files whose process is gone; returns how many."""
        self.swept_at = time.monotonic()
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            if entry.name.startswith("upload-") and self._abandoned(entry):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        if removed:
            log.info("swept %d spool files left by stopped processes", removed)
        return removed

    def sweep_if_due(self) -> None:
        if time.monotonic() - self.swept_at >= self.SWEEP_EVERY:
            self.sweep()

    @staticmethod
    def _abandoned(entry: os.DirEntry) -> bool:
        prefix, _, rest = entry.name.rpartition("-")[0].rpartition("-")
        host = prefix.removeprefix("upload-")
        if host == HOST and rest.isdigit():
            pid = int(rest)
            if pid == os.getpid():
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        try:
            return entry.stat().st_mtime < time.time() - FOREIGN_SPOOL_MAX_AGE
        except FileNotFoundError:
            return False


@dataclasses.dataclass
class BodyLimits:
    kind_title: str
    max_files: int
    max_file_bytes: int  # all files together
    max_body_bytes: int  # the server's limit for any request
    min_rate: int  # bytes per second, over `window`
    window: float


class _TooSlow(Exception):
    pass


def _cooperative() -> bool:
    from gevent import monkey

    return monkey.is_module_patched("socket")


def discard_body(stream: BinaryIO, max_bytes: int, seconds: float) -> bool:
    """Read and drop the rest of a body if it ends within `max_bytes` and `seconds`;
    returns whether it did. Nothing is written anywhere."""
    deadline = time.monotonic() + seconds
    left = max_bytes
    try:
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if _cooperative():
                import gevent

                with gevent.Timeout(remaining, _TooSlow):
                    chunk = stream.read(min(CHUNK, left))
            else:
                chunk = stream.read(min(CHUNK, left))
            if not chunk:
                return True
            left -= len(chunk)
    except (_TooSlow, RequestEntityTooLarge, ClientDisconnected, OSError):
        return False
    return False


class BodyReader:
    """Reads one multipart body into form fields and spooled files, or raises Refused."""

    def __init__(
        self,
        stream: BinaryIO,
        boundary: str,
        limits: BodyLimits,
        open_file: Callable[[str], SpooledFile],
        csrf_problem: Callable[[str | None], str | None],
        header_token: str | None,
    ):
        self.stream = stream
        self.boundary = boundary
        self.limits = limits
        self.open_file = open_file  # the client's file name -> where its bytes go
        self.csrf_problem = csrf_problem
        self.header_token = header_token
        self.complete = False  # the body was read to its end
        self.received = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._started = time.monotonic()
        self._csrf_ok = False

    # -- reading, at no less than the floor rate ----------------------------------------------

    def _read(self) -> bytes:
        window = self.limits.window
        try:
            if _cooperative():
                import gevent

                with gevent.Timeout(window, _TooSlow):
                    chunk = self.stream.read(CHUNK)
            else:
                chunk = self.stream.read(CHUNK)
        except _TooSlow:
            raise self._too_slow() from None
        except RequestEntityTooLarge:
            raise self._server_limit() from None
        except (ClientDisconnected, OSError):
            raise Refused("The upload was cut off before it ended.", 400) from None
        now = time.monotonic()
        self.received += len(chunk)
        self._samples.append((now, self.received))
        while len(self._samples) > 1 and self._samples[1][0] <= now - window:
            self._samples.popleft()
        if chunk and now - self._started >= window:
            before = self._samples[0][1] if self._samples[0][0] <= now - window else 0
            if self.received - before < self.limits.min_rate * window:
                raise self._too_slow()
        return chunk

    def _too_slow(self) -> Refused:
        return Refused(
            f"The upload was too slow: less than {filesize(self.limits.min_rate)} a second "
            f"over {self.limits.window:g} s. Try again on a faster connection.",
            408,
        )

    def _server_limit(self) -> Refused:
        return Refused(
            f"The upload is larger than {filesize(self.limits.max_body_bytes)}, "
            "the most this server accepts.",
            413,
        )

    # -- decoding -------------------------------------------------------------------------------

    def read(self) -> Upload:
        upload = Upload(MultiDict(), [])
        try:
            self._decode(upload)
        except Refused as refusal:
            upload.discard()
            refusal.fields = upload.fields  # what was read, to fill the form in again
            raise
        except BaseException:
            upload.discard()
            raise
        return upload

    def _check_csrf(self, field_token: str | None) -> None:
        if self._csrf_ok:
            return
        problem = self.csrf_problem(self.header_token or field_token)
        if problem:
            raise Refused(problem, 400)
        self._csrf_ok = True

    def _decode(self, upload: Upload) -> None:
        limits = self.limits
        try:
            decoder = MultipartDecoder(self.boundary.encode("latin-1"))
        except UnicodeEncodeError:
            raise Refused("The upload is malformed (bad multipart boundary).") from None
        if self.header_token:
            self._check_csrf(None)
        form_parts = form_bytes = file_bytes = 0
        field: tuple[str, bytearray] | None = None
        target: SpooledFile | None = None
        ended = False
        while True:
            try:
                event = decoder.next_event()
            except ValueError:
                raise Refused("The upload is malformed (bad multipart body).") from None
            if isinstance(event, NeedData):
                if ended:
                    raise Refused("The upload is malformed (it ends mid-part).")
                chunk = self._read()
                if self.received > limits.max_body_bytes:
                    raise self._server_limit()
                ended = not chunk
                decoder.receive_data(chunk or None)
                if len(decoder.buffer) > MAX_BUFFERED + CHUNK:
                    raise Refused(
                        "The upload is malformed (a part's headers, or the text around "
                        "the parts, are too long)."
                    )
                continue
            if isinstance(event, Epilogue):
                break
            if isinstance(event, Preamble):
                continue
            if isinstance(event, File) and event.name == "files" and event.filename:
                self._check_csrf(self._token(upload))
                if len(upload.files) >= limits.max_files:
                    raise Refused(
                        f"Too many files: more than {limits.max_files} chosen, "
                        f"{limits.kind_title} takes at most {limits.max_files}."
                    )
                target = self.open_file(event.filename)
                upload.files.append(target)
            elif isinstance(event, Field | File):
                form_parts += 1
                if form_parts > MAX_FORM_PARTS:
                    raise Refused(f"The form has too many fields ({MAX_FORM_PARTS} at most).")
                # A file input left empty, or a file under another name: nothing to keep.
                field = (event.name, bytearray()) if isinstance(event, Field) else ("", None)
            elif isinstance(event, Data):
                if target is not None:
                    file_bytes += len(event.data)
                    if file_bytes > limits.max_file_bytes:
                        raise Refused(
                            f"The files add up to more than {filesize(limits.max_file_bytes)}, "
                            f"the most {limits.kind_title} takes.",
                            413,
                        )
                    target.write(event.data)
                    if not event.more_data:
                        target.target.close()
                        target = None
                elif field is not None:
                    name, value = field
                    if value is not None:
                        value += event.data
                        form_bytes += len(event.data)
                        if len(value) > MAX_FIELD_BYTES or form_bytes > MAX_FORM_BYTES:
                            raise Refused(f"The form field “{name[:40]}” is too long.")
                    if not event.more_data:
                        if value is not None:
                            upload.fields.add(name, value.decode("utf-8", "replace"))
                        field = None
        self.complete = True
        self._check_csrf(self._token(upload))

    @staticmethod
    def _token(upload: Upload) -> str | None:
        return upload.fields.get("csrf_token")
