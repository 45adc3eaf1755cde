"""Where job files live: the instance folder (the default) or an S3-compatible bucket.

`HEADWAY_STORAGE_URL` chooses: unset for the instance folder, `s3://bucket/prefix` for object
storage reached through boto3's standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or any other way boto3 finds credentials).

Every file has a key, the same in both backends:
    jobs/<id>/input/<name>     an upload, written by the web process that received it
    jobs/<id>/output/<name>    a result, written by the job's process once the work is done
    jobs/<id>/all-files.zip    "Download all", built beside the results
In the instance folder a key is the path below it, so `instance/jobs/<id>/...` is what it
always was. Nothing outside these keys is shared between nodes: a web node's spool and a
worker's temporary folder are its own.

Uploads are written through `Storage.new_upload`: as the body streams in, an `ObjectUpload`
takes the bytes and (on S3) sends a part of a multipart upload each time PART_SIZE bytes have
arrived, so a 2 GB upload is in the bucket moments after its last byte, and the web node's
disk holds one part of it at a time (the whole file only while a kind's content check needs
it). Nothing is visible under its key until `commit()`; `abort()` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import re
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlsplit

log = logging.getLogger("headway.storage")

PART_SIZE = 8 * 1024 * 1024  # S3 wants 5 MiB at least for every part but the last
BUNDLE_NAME = "all-files.zip"
HOST = socket.gethostname().replace("/", "_")
_JOB_KEY = re.compile(r"jobs/([0-9a-f]{32})/")


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def input_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/input/{name}"


def output_key(job_id: str, name: str) -> str:
    return f"jobs/{job_id}/output/{name}"


def bundle_key(job_id: str) -> str:
    return f"jobs/{job_id}/{BUNDLE_NAME}"


class StorageError(Exception):
    """The storage could not do what was asked (unreachable, refused, out of space)."""


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str  # without quotes
    modified: datetime.datetime


def spool_name(suffix: str = "") -> str:
    """A spool file's name: its host and process, so that a sweep knows whose it is."""
    return f"upload-{HOST}-{os.getpid()}-{secrets.token_hex(8)}{suffix}"


def parse_url(url: str) -> tuple[str, str] | None:
    """(bucket, prefix) of `s3://bucket/prefix`; None for the instance folder (empty url)."""
    if not url:
        return None
    parts = urlsplit(url)
    bucket, prefix = parts.netloc, parts.path.strip("/")
    if parts.scheme != "s3" or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]", bucket):
        raise ValueError(
            f"HEADWAY_STORAGE_URL must be empty (the instance folder) or s3://bucket/prefix, "
            f"not {url!r}"
        )
    return bucket, prefix


class ObjectUpload:
    """One file being written into storage as it arrives; `commit()` or `abort()` ends it."""

    key: str
    size: int
    local_path: Path | None  # the whole file on this node, while a content check needs it

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """No more data (the file's part of the body ended)."""

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class Storage:
    """The operations web and workers need; both backends implement them."""

    url = ""

    def new_upload(self, key: str, spool_dir: Path, keep_local: bool) -> ObjectUpload:
        raise NotImplementedError

    def fetch(self, key: str, path: Path) -> None:
        """Copy an object to a local file (a hard link when it can). KeyError if missing."""
        raise NotImplementedError

    def put(self, path: Path, key: str) -> None:
        """Store a local file under `key` (replacing one there), whole or not at all."""
        raise NotImplementedError

    def copy(self, source: str, key: str) -> None:
        """Copy an object inside the storage (never through this process). KeyError if missing."""
        raise NotImplementedError

    def info(self, key: str) -> ObjectInfo | None:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def remove_prefix(self, prefix: str) -> int:
        """Remove every object whose key starts with `prefix` (a folder: ends with "/")."""
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError

    def job_objects(self) -> Iterator[tuple[str, float]]:
        """(job id, time of its newest object) for every job with objects, for the orphan
        sweep."""
        raise NotImplementedError

    def abort_stale_uploads(self, before: float) -> int:
        """Abort uploads begun before `before` and never finished (their process died)."""
        return 0

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under `prefix` (for tests and the operator's curiosity)."""
        raise NotImplementedError

    def remove_job(self, job_id: str) -> int:
        return self.remove_prefix(job_prefix(job_id))

    def remove_results(self, job_id: str) -> None:
        """A failed or cancelled attempt's results, whatever of them reached the storage."""
        self.remove_prefix(f"jobs/{job_id}/output/")
        self.remove(bundle_key(job_id))


# -- the instance folder ------------------------------------------------------------------------


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # no copy of possibly huge files
    except OSError:
        shutil.copyfile(source, target)


class _LocalUpload(ObjectUpload):
    """A spool file, hard-linked to its key on commit."""

    def __init__(self, storage: LocalStorage, key: str, spool_dir: Path):
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.storage, self.key, self.size = storage, key, 0
        self.local_path = spool_dir / spool_name()
        self._file: BinaryIO | None = self.local_path.open("xb")

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def commit(self) -> None:
        self.close()
        target = self.storage.path(self.key)
        target.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(self.local_path, target)
        self.local_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self.close()
        self.local_path.unlink(missing_ok=True)


class LocalStorage(Storage):
    """Files in the instance folder: `instance/<key>`. Several nodes may share the folder
    (NFS); then it is the one thing besides Redis that they share."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.url = ""

    def path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"bad storage key {key!r}")
        return self.root / key

    def new_upload(self, key: str, spool_dir: Path, keep_local: bool) -> ObjectUpload:
        return _LocalUpload(self, key, spool_dir)

    def fetch(self, key: str, path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise KeyError(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(source, path)

    def put(self, path: Path, key: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}")
        try:
            _link_or_copy(path, partial)
            os.replace(partial, target)  # never seen half-written
        except BaseException:
            partial.unlink(missing_ok=True)
            raise

    def copy(self, source: str, key: str) -> None:
        self.fetch(source, self.path(key))

    def info(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        modified = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC)
        return ObjectInfo(stat.st_size, f"{stat.st_mtime_ns:x}-{stat.st_size:x}", modified)

    def remove_prefix(self, prefix: str) -> int:
        target = self.path(prefix.rstrip("/"))
        if target.is_dir():
            count = sum(len(files) for _, _, files in os.walk(target))
            shutil.rmtree(target, ignore_errors=True)
            return count
        return 0

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def job_objects(self) -> Iterator[tuple[str, float]]:
        try:
            entries = list(os.scandir(self.root / "jobs"))
        except FileNotFoundError:
            return
        for entry in entries:
            if not re.fullmatch(r"[0-9a-f]{32}", entry.name):
                continue
            newest = 0.0
            for folder, _, files in os.walk(entry.path):
                for name in [".", *files]:
                    with contextlib.suppress(OSError):
                        newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime)
            yield entry.name, newest

    def keys(self, prefix: str = "") -> list[str]:
        base = self.path(prefix.rstrip("/")) if prefix else self.root
        found = []
        for folder, _, files in os.walk(base):
            for name in files:
                found.append(Path(folder, name).relative_to(self.root).as_posix())
        return sorted(found)


# -- S3-compatible object storage -----------------------------------------------------------------


class _S3Upload(ObjectUpload):
    """A multipart upload fed as the body arrives: each PART_SIZE bytes go out as one part
    from a part-sized spool file (and, when a content check needs the whole file, a full
    copy is kept beside it until the upload ends). A file smaller than one part is sent
    with one PUT on commit. The object exists only once committed."""

    def __init__(self, storage: S3Storage, key: str, spool_dir: Path, keep_local: bool):
        spool_dir.mkdir(parents=True, exist_ok=True)
        self.storage, self.key, self.size = storage, key, 0
        self._part_path = spool_dir / spool_name(".part")
        self._part: BinaryIO = self._part_path.open("w+b")
        self._buffered = 0
        self.local_path = spool_dir / spool_name() if keep_local else None
        self._whole: BinaryIO | None = self.local_path.open("xb") if self.local_path else None
        self._upload_id: str | None = None
        self._parts: list[dict] = []
        self._done = False

    def write(self, data: bytes) -> None:
        self._part.write(data)
        if self._whole is not None:
            self._whole.write(data)
        self.size += len(data)
        self._buffered += len(data)
        if self._buffered >= PART_SIZE:
            self._send_part()

    def _send_part(self) -> None:
        s3, client = self.storage, self.storage.client
        self._part.flush()
        self._part.seek(0)
        try:
            if self._upload_id is None:
                self._upload_id = client.create_multipart_upload(
                    Bucket=s3.bucket, Key=s3.full_key(self.key)
                )["UploadId"]
            number = len(self._parts) + 1
            answer = s3.call(
                client.upload_part,
                Bucket=s3.bucket,
                Key=s3.full_key(self.key),
                UploadId=self._upload_id,
                PartNumber=number,
                Body=self._part,
                ContentLength=self._buffered,
            )
        except s3.errors as exc:
            raise StorageError(f"could not store {self.key}: {exc}") from exc
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})
        self._part.seek(0)
        self._part.truncate()
        self._buffered = 0

    def close(self) -> None:
        if self._whole is not None:
            self._whole.close()
            self._whole = None

    def commit(self) -> None:
        s3, client = self.storage, self.storage.client
        self.close()
        try:
            if self._upload_id is None:
                self._part.flush()
                self._part.seek(0)
                s3.call(
                    client.put_object,
                    Bucket=s3.bucket,
                    Key=s3.full_key(self.key),
                    Body=self._part,
                    ContentLength=self._buffered,
                )
            else:
                if self._buffered:
                    self._send_part()
                client.complete_multipart_upload(
                    Bucket=s3.bucket,
                    Key=s3.full_key(self.key),
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except s3.errors as exc:
            self.abort()
            raise StorageError(f"could not store {self.key}: {exc}") from exc
        self._done = True
        self._clean()

    def abort(self) -> None:
        self.close()
        if self._upload_id is not None and not self._done:
            s3 = self.storage
            try:
                s3.client.abort_multipart_upload(
                    Bucket=s3.bucket, Key=s3.full_key(self.key), UploadId=self._upload_id
                )
            except s3.errors as exc:  # the stale-upload sweep gets it later
                log.warning("could not abort the upload of %s: %s", self.key, exc)
            self._upload_id = None
        self._clean()

    def _clean(self) -> None:
        with contextlib.suppress(OSError):
            self._part.close()
        self._part_path.unlink(missing_ok=True)
        if self.local_path is not None:
            self.local_path.unlink(missing_ok=True)


class S3Storage(Storage):
    """Objects in `bucket` under `prefix/`, through one boto3 client per process."""

    def __init__(self, url: str):
        import boto3
        import botocore.config
        import botocore.exceptions
        from boto3.s3.transfer import TransferConfig

        self.url = url
        self.bucket, self.prefix = parse_url(url)
        self.client = boto3.session.Session().client(
            "s3",
            config=botocore.config.Config(
                signature_version="s3v4",  # presigned URLs too (boto3 would sign those SigV2)
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=64,
                # Checksums only where the protocol requires them: S3-compatible servers
                # differ in what they make of the newer trailing ones.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.errors = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
        self._client_error = botocore.exceptions.ClientError
        self.transfer = TransferConfig(
            multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4
        )

    def full_key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def short_key(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    @staticmethod
    def call(method, **kwargs):
        """A call that sends a body: in a gevent-patched process it runs on gevent's thread
        pool, so that signing and checksumming a part (CPU work over megabytes) never holds
        the event loop; elsewhere it runs here."""
        if _cooperative():
            import gevent

            return gevent.get_hub().threadpool.apply(method, kwds=kwargs)
        return method(**kwargs)

    @contextlib.contextmanager
    def _translated(self, doing: str, key: str) -> Iterator[None]:
        """boto3's errors as the storage's own: a missing object as KeyError(key), any
        other failure as StorageError("could not <doing> <key>: ...")."""
        try:
            yield
        except self._client_error as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise KeyError(key) from None
            raise StorageError(f"could not {doing} {key}: {exc}") from exc
        except self.errors as exc:
            raise StorageError(f"could not {doing} {key}: {exc}") from exc

    def new_upload(self, key: str, spool_dir: Path, keep_local: bool) -> ObjectUpload:
        return _S3Upload(self, key, spool_dir, keep_local)

    def fetch(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._translated("fetch", key):
            self.client.download_file(
                self.bucket, self.full_key(key), str(path), Config=self.transfer
            )

    def put(self, path: Path, key: str) -> None:
        try:
            self.client.upload_file(
                str(path), self.bucket, self.full_key(key), Config=self.transfer
            )
        except self.errors as exc:
            raise StorageError(f"could not store {key}: {exc}") from exc

    def copy(self, source: str, key: str) -> None:
        with self._translated("copy", source):
            self.client.copy(
                {"Bucket": self.bucket, "Key": self.full_key(source)},
                self.bucket,
                self.full_key(key),
                Config=self.transfer,
            )

    def info(self, key: str) -> ObjectInfo | None:
        try:
            with self._translated("look up", key):
                head = self.client.head_object(Bucket=self.bucket, Key=self.full_key(key))
        except KeyError:
            return None
        return ObjectInfo(head["ContentLength"], head["ETag"].strip('"'), head["LastModified"])

    def open(self, key: str, start: int | None = None, stop: int | None = None):
        """The object's body (a botocore StreamingBody), bytes [start, stop) if given."""
        extra = {"Range": f"bytes={start}-{stop - 1}"} if start is not None else {}
        with self._translated("read", key):
            return self.client.get_object(Bucket=self.bucket, Key=self.full_key(key), **extra)[
                "Body"
            ]

    def presigned_url(self, key: str, filename: str, mimetype: str, seconds: float) -> str:
        return self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self.full_key(key),
                "ResponseContentDisposition": content_disposition(filename),
                "ResponseContentType": mimetype,
                "ResponseCacheControl": "private, no-cache",
            },
            ExpiresIn=max(1, int(seconds)),
        )

    def _list(self, prefix: str) -> Iterator[dict]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key(prefix)):
            yield from page.get("Contents", [])

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(self.short_key(o["Key"]) for o in self._list(prefix))

    def remove_prefix(self, prefix: str) -> int:
        removed = 0
        batch: list[dict] = []
        for item in self._list(prefix):
            batch.append({"Key": item["Key"]})
            if len(batch) == 1000:
                removed += self._delete(batch)
                batch = []
        if batch:
            removed += self._delete(batch)
        return removed

    def _delete(self, batch: list[dict]) -> int:
        # One by one: DeleteObjects needs a Content-MD5 that not every server computes alike,
        # and retention removes a handful of objects per job.
        for item in batch:
            self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
        return len(batch)

    def remove(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.full_key(key))

    def job_objects(self) -> Iterator[tuple[str, float]]:
        newest: dict[str, float] = {}
        for item in self._list("jobs/"):
            match = _JOB_KEY.match(self.short_key(item["Key"]))
            if match:
                when = item["LastModified"].timestamp()
                newest[match[1]] = max(newest.get(match[1], 0.0), when)
        yield from newest.items()

    def abort_stale_uploads(self, before: float) -> int:
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.full_key("jobs/")):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < before:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted


def content_disposition(filename: str) -> str:
    """`attachment` with the name as ASCII and, for the rest, RFC 5987's UTF-8 form."""
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename)}"


def _cooperative() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("socket")


_lock = threading.Lock()


@functools.cache
def _s3(url: str, pid: int) -> S3Storage:
    return S3Storage(url)


def for_settings(settings) -> Storage:
    """The storage the settings name: one S3 client per process (clients are not fork-safe),
    or the instance folder."""
    if not settings.storage_url:
        return LocalStorage(settings.instance_path)
    with _lock:
        return _s3(settings.storage_url, os.getpid())


def sweep_orphans(storage: Storage, has_record, grace: float, now: float | None = None) -> int:
    """Remove the objects of jobs that have no record (their retention ended while no sweep
    ran, or their process died between storing files and creating the record), once their
    newest object is older than `grace`; abort multipart uploads left that long. Returns
    the number of jobs removed."""
    now = now or time.time()
    removed = 0
    for job_id, newest in list(storage.job_objects()):
        if newest < now - grace and not has_record(job_id):
            storage.remove_job(job_id)
            log.info("job %s: removed orphaned files", job_id)
            removed += 1
    aborted = storage.abort_stale_uploads(now - grace)
    if aborted:
        log.info("aborted %d unfinished uploads", aborted)
    return removed
