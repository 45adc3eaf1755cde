"""Result downloads: owner only, as attachments, with conditional requests and ranges."""

from __future__ import annotations

import mimetypes
import os
import tempfile
import zipfile
from pathlib import Path

from flask import Blueprint, abort, send_file

from headway.web import load_job, services

bp = Blueprint("files", __name__)


@bp.get("/jobs/<job_id>/files/<path:name>")
def download(job_id: str, name: str):
    """One result file of a finished job."""
    job = load_job(job_id)
    if name not in {f["name"] for f in job.files}:  # only listed names: no traversal at all
        abort(404)
    path = services().store.job_dir(job.id) / "output" / name
    if not path.is_file():
        abort(404)
    return send_file(
        path,
        as_attachment=True,
        download_name=name,
        conditional=True,
        mimetype=mimetypes.guess_type(name)[0] or "application/octet-stream",
        max_age=0,
    )


@bp.get("/jobs/<job_id>/all-files.zip")
def download_all(job_id: str):
    """Every result of the job in one zip, built once and kept beside the results."""
    job = load_job(job_id)
    if job.status != "succeeded" or len(job.files) < 2:
        abort(404)
    job_dir = services().store.job_dir(job.id)
    bundle = job_dir / "all-files.zip"
    if not bundle.exists():
        fd, name = tempfile.mkstemp(dir=job_dir, prefix=".all-files.", suffix=".zip")
        partial = Path(name)
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
            for f in job.files:
                zf.write(job_dir / "output" / f["name"], f["name"])
        os.replace(partial, bundle)
    return send_file(
        bundle,
        as_attachment=True,
        download_name=f"headway-{job.id[:8]}.zip",
        conditional=True,
        mimetype="application/zip",
        max_age=0,
    )
