"""Result downloads: owner only, as attachments, with conditional requests and ranges."""

from __future__ import annotations

import mimetypes

from flask import Blueprint, abort, send_file

from headway.web import error_response, load_job, services
from jobs.bundle import bundle_path

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
    """Every result of the job in one zip, built by the worker when the job ended."""
    job = load_job(job_id)
    bundle = bundle_path(services().store.job_dir(job.id))
    if job.status != "succeeded" or len(job.files) < 2:
        abort(404)
    if not bundle.is_file():  # a job that ended before bundles were built by workers
        return error_response(
            404, "Not Found", "This job has no zip of all its files; download them one by one."
        )
    return send_file(
        bundle,
        as_attachment=True,
        download_name=f"headway-{job.id[:8]}.zip",
        conditional=True,
        mimetype="application/zip",
        max_age=0,
    )
