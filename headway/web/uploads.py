"""New jobs from upload forms: files stream to disk, are checked by content, then queued.

Nothing is half-written: the job's folder is filled first and removed again on any refusal,
and the record is created only once every file has been accepted.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import unicodedata
from pathlib import Path

from flask import (
    Blueprint,
    Request,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import RequestEntityTooLarge

from headway.store import new_job_id
from headway.web import current_owner, is_htmx, services
from headway.web.format import filesize
from jobs import control, kinds

bp = Blueprint("uploads", __name__)

MAX_NAME_BYTES = 120
MULTIPART_OVERHEAD = 1024 * 1024  # room for form fields and part headers


class UploadRequest(Request):
    """Writes every uploaded file straight to disk, beside the job folders.

    Keeping the spool on the same filesystem lets an accepted file become a job input by a
    hard link instead of a copy.
    """

    def _get_file_stream(
        self, total_content_length, content_type, filename=None, content_length=None
    ):
        spool = services().settings.instance_path / "uploads"
        spool.mkdir(parents=True, exist_ok=True)
        stream = tempfile.NamedTemporaryFile("wb+", dir=spool, prefix="upload-")  # noqa: SIM115
        self.__dict__.setdefault("_spooled", []).append(stream)
        return stream

    def close(self) -> None:
        """Remove every spooled file, those of a refused or cut-off upload included."""
        super().close()
        for stream in self.__dict__.pop("_spooled", []):
            stream.close()


class Refused(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def safe_name(raw: str, index: int) -> str:
    """A file name that is safe on disk and in archives, keeping what a person would read."""
    name = unicodedata.normalize("NFC", raw.replace("\\", "/")).rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")  # controls, NUL
    name = re.sub(r"\s+", " ", name).strip(" .")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    ext = ext[:16]
    room = MAX_NAME_BYTES - len(ext.encode()) - 1
    stem = stem.encode()[:room].decode("utf-8", "ignore")  # one cut, never mid-character
    name = f"{stem}.{ext}" if stem and ext else (stem or "")
    return name or f"file-{index + 1}{'.' + ext if ext else ''}"


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 1
    stem, dot, ext = name.rpartition(".")
    while candidate in taken:
        n += 1
        candidate = f"{stem} ({n}).{ext}" if dot and stem else f"{name} ({n})"
    taken.add(candidate)
    return candidate


def _chosen_files() -> list[FileStorage]:
    # A form submitted with no file chosen still sends one empty part without a name.
    return [f for f in request.files.getlist("files") if f.filename]


def save_inputs(kind: kinds.JobKind, job_dir: Path, uploads: list[FileStorage]) -> list[str]:
    """Check counts, sizes and contents, and place the files; raises Refused."""
    if len(uploads) < kind.min_files:
        raise Refused(f"Choose at least {kind.min_files} file{'s' * (kind.min_files > 1)}.")
    if len(uploads) > kind.max_files:
        raise Refused(
            f"Too many files: {len(uploads)} chosen, {kind.title} takes at most {kind.max_files}."
        )
    input_dir = job_dir / "input"
    input_dir.mkdir(parents=True)
    names: list[str] = []
    total = 0
    for index, upload in enumerate(uploads):
        name = _unique(safe_name(upload.filename or "", index), set(names))
        target = input_dir / name
        spooled = getattr(upload.stream, "name", None)
        if isinstance(spooled, str) and os.path.exists(spooled):
            upload.stream.flush()
            os.link(spooled, target)
        else:
            upload.save(target)
        size = target.stat().st_size
        total += size
        if size == 0:
            raise Refused(f"“{name}” is empty.")
        if total > kind.max_total_bytes:
            raise Refused(
                f"The files add up to more than {filesize(kind.max_total_bytes)}, "
                f"the most {kind.title} takes.",
                status=413,
            )
        if kind.check_file is not None and (reason := kind.check_file(target)):
            raise Refused(f"“{name}” was refused: {reason}.")
        names.append(name)
    return names


def refuse_oversized_upload():
    """Refuse an upload by its declared length, before anything (CSRF included) reads it."""
    if request.method != "POST" or request.endpoint != "uploads.new_job":
        return None
    kind = kinds.get((request.view_args or {}).get("slug", ""))
    length = request.content_length or 0
    if kind is not None and length > kind.max_total_bytes + MULTIPART_OVERHEAD:
        return _form_response(
            kind,
            _blank_form(kind),
            f"The upload is larger than {filesize(kind.max_total_bytes)}, "
            f"the most {kind.title} takes.",
            413,
        )
    if kind is not None and length > current_app.config["MAX_CONTENT_LENGTH"]:
        return _too_large_for_server(kind)
    return None


def _too_large_for_server(kind: kinds.JobKind):
    return _form_response(
        kind,
        _blank_form(kind),
        f"The upload is larger than {filesize(current_app.config['MAX_CONTENT_LENGTH'])}, "
        "the most this server accepts.",
        413,
    )


def _blank_form(kind: kinds.JobKind):
    return kind.options() if kind.options else None


def _title(kind: kinds.JobKind, names: list[str]) -> str:
    """The job's title from its kind and files, e.g. "Count lines: a.txt and 1 more"."""
    if not names:
        return kind.title
    more = f" and {len(names) - 1} more" if len(names) > 1 else ""
    return f"{kind.title}: {names[0]}{more}"


def _form_response(kind, form, error: str | None, status: int = 200):
    template = "partials/job_form.html" if is_htmx() else "jobs/new.html"
    return render_template(template, kind=kind, form=form, error=error), status


@bp.route("/jobs/new/<slug>", methods=["GET", "POST"])
def new_job(slug: str):
    """The upload form of a job kind; a valid submission creates the job and goes to its page."""
    kind = kinds.get(slug)
    if kind is None:
        abort(404)
    if request.method == "GET":
        return _form_response(kind, _blank_form(kind), None)

    svc = services()
    try:
        form = kind.options(request.form) if kind.options else None
        uploads = _chosen_files()
    except RequestEntityTooLarge:  # a body longer than it said (or of unknown length)
        return _too_large_for_server(kind)
    if form is not None and not form.validate():
        return _form_response(kind, form, "Please correct the highlighted fields.", 400)

    owner = current_owner()
    svc.limits.check_job(owner, running_now=svc.store.owner_running_count(owner))
    job_id = new_job_id()
    job_dir = svc.store.job_dir(job_id)
    try:
        names = save_inputs(kind, job_dir, uploads)
        params = json.loads(json.dumps(form.data if form else {}, default=str))
        control.submit(
            kind,
            job_id=job_id,
            owner=owner,
            title=_title(kind, names),
            params=params,
            inputs=names,
            store=svc.store,
        )
    except Refused as refusal:
        shutil.rmtree(job_dir, ignore_errors=True)
        return _form_response(kind, form, str(refusal), refusal.status)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise
    svc.limits.record_job(owner)
    page = url_for("pages.job_page", job_id=job_id)
    if is_htmx():
        return Response(headers={"HX-Redirect": page})
    return redirect(page, code=303)
