"""Result downloads: owner only, as attachments, with conditional requests and ranges.

The owner check always comes first, here. Then, by backend:
- the instance folder: the file is sent from disk (werkzeug does ranges and conditionals);
- S3 with HEADWAY_DOWNLOADS=redirect (the default): a redirect to a presigned URL that lives
  HEADWAY_DOWNLOAD_URL_SECONDS and names the file (`Content-Disposition: attachment`); the
  bucket then answers ranges and conditionals itself, and no byte passes through the web;
- S3 with HEADWAY_DOWNLOADS=stream (a bucket that browsers cannot reach): the web process
  streams the object (or the requested range) from the bucket as it reads it.
"""

from __future__ import annotations

import logging
import mimetypes

from flask import Blueprint, Response, abort, redirect, request, send_file, stream_with_context
from werkzeug.http import http_date, is_resource_modified

from headway.storage import (
    LocalStorage,
    S3Storage,
    StorageError,
    bundle_key,
    content_disposition,
    output_key,
)
from headway.web import error_response, load_job, services

bp = Blueprint("files", __name__)
log = logging.getLogger("headway.files")

STREAM_CHUNK = 256 * 1024


@bp.get("/jobs/<job_id>/files/<path:name>")
def download(job_id: str, name: str):
    """One result file of a finished job."""
    job = load_job(job_id)
    if name not in {f["name"] for f in job.files}:  # only listed names: no traversal at all
        abort(404)
    mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    answer = _send(output_key(job.id, name), name, mimetype)
    if answer is None:
        abort(404)
    return answer


@bp.get("/jobs/<job_id>/all-files.zip")
def download_all(job_id: str):
    """Every result of the job in one zip, built by the worker when the job ended."""
    job = load_job(job_id)
    if job.status != "succeeded" or len(job.files) < 2:
        abort(404)
    answer = _send(bundle_key(job.id), f"headway-{job.id[:8]}.zip", "application/zip")
    if answer is None:  # a job that ended before bundles were built by workers
        return error_response(
            404, "Not Found", "This job has no zip of all its files; download them one by one."
        )
    return answer


def _send(key: str, filename: str, mimetype: str) -> Response | None:
    """The object as an attachment, or None when it is not in storage."""
    svc = services()
    storage = svc.store.storage
    try:
        if isinstance(storage, LocalStorage):
            path = storage.path(key)
            if not path.is_file():
                return None
            return send_file(
                path,
                as_attachment=True,
                download_name=filename,
                conditional=True,
                mimetype=mimetype,
                max_age=0,
            )
        assert isinstance(storage, S3Storage)
        if svc.settings.downloads == "redirect":
            if not storage.exists(key):
                return None
            url = storage.presigned_url(key, filename, mimetype, svc.settings.download_url_seconds)
            return redirect(url, code=302)
        return _stream(storage, key, filename, mimetype)
    except StorageError as exc:
        log.error("download of %s: %s", key, exc)
        return error_response(
            503,
            "Temporarily unavailable",
            "The file cannot be read from storage right now; try again in a few seconds.",
            {"Retry-After": "5"},
        )


def _stream(storage: S3Storage, key: str, filename: str, mimetype: str) -> Response | None:
    """The object through this process: conditionals and one range answered here, the bytes
    read from the bucket as they are sent."""
    info = storage.info(key)
    if info is None:
        return None
    headers = {
        "Content-Disposition": content_disposition(filename),
        "ETag": f'"{info.etag}"',
        "Last-Modified": http_date(info.modified),
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-cache",
    }
    if not is_resource_modified(request.environ, etag=info.etag, last_modified=info.modified):
        return Response(status=304, headers=headers)
    start, stop, status = 0, info.size, 200
    wanted = request.range
    if_range = request.if_range
    fresh = not (if_range.etag or if_range.date) or (
        if_range.etag == info.etag
        or (if_range.date is not None and if_range.date >= info.modified.replace(microsecond=0))
    )
    if wanted is not None and fresh:
        span = wanted.range_for_length(info.size)
        if span is None:
            headers["Content-Range"] = f"bytes */{info.size}"
            return Response(status=416, headers=headers)
        start, stop = span
        status = 206
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{info.size}"
    if stop <= start:
        body = iter(())
    else:
        try:
            stream = storage.open(key, start, stop) if status == 206 else storage.open(key)
        except KeyError:  # removed since the look-up (its retention ended)
            return None

        def chunks():
            try:
                yield from stream.iter_chunks(STREAM_CHUNK)
            finally:
                stream.close()

        body = stream_with_context(chunks())
    response = Response(body, status=status, mimetype=mimetype, headers=headers)
    response.content_length = stop - start
    return response
