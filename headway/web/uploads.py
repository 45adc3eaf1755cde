"""New jobs from upload forms: files stream to disk, are checked by content, then queued.

Every limit holds before or while the body streams in (headway/web/upload_body.py); the
kind's content checks run in the checker processes (headway/web/checks.py), never on the
event loop. Nothing is half-written: the job's folder is filled first and removed again on
any refusal, and the record is created only once every file has been accepted.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import unicodedata
from pathlib import Path

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import validate_csrf
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from wtforms import ValidationError

from headway.limits import LimitExceeded
from headway.store import new_job_id
from headway.web import check_new_job, client_address, current_owner, is_htmx, services
from headway.web.checks import ChecksBusy
from headway.web.format import filesize
from headway.web.upload_body import (
    MAX_FORM_BYTES,
    BodyLimits,
    BodyReader,
    Refused,
    Spool,
    SpooledFile,
    Upload,
    discard_body,
)
from jobs import control, kinds

bp = Blueprint("uploads", __name__)

MAX_NAME_BYTES = 120
MULTIPART_OVERHEAD = 1024 * 1024  # room for form fields and part headers
SMALL_BODY = 64 * 1024  # any other form (cancel, retry) is a token and a flag or two
# After refusing an upload mid-body, read (and drop) a little more of it: a browser that is
# still sending when the connection closes may see a reset instead of the answer. A body
# longer than this still ends with the connection.
LINGER_BYTES = 2 * 1024 * 1024
LINGER_SECONDS = 1.0


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


def spool(app: Flask | None = None) -> Spool:
    """The process's upload spool, beside the job folders."""
    app = app or current_app
    if "headway_spool" not in app.extensions:
        folder = app.extensions["headway"].settings.instance_path / "uploads"
        app.extensions["headway_spool"] = Spool(folder)
    return app.extensions["headway_spool"]


def save_inputs(kind: kinds.JobKind, job_dir: Path, files: list[SpooledFile]) -> list[str]:
    """Check counts and contents (in the checker processes) and place the files; raises
    Refused. The spool's files become the job's inputs by hard links."""
    if len(files) < kind.min_files:
        raise Refused(f"Choose at least {kind.min_files} file{'s' * (kind.min_files > 1)}.")
    input_dir = job_dir / "input"
    input_dir.mkdir(parents=True)
    names: list[str] = []
    for index, upload in enumerate(files):
        name = _unique(safe_name(upload.filename, index), set(names))
        if upload.size == 0:
            raise Refused(f"“{name}” is empty.")
        target = input_dir / name
        try:
            os.link(upload.path, target)
        except OSError:
            shutil.copyfile(upload.path, target)
        names.append(name)
    if kind.check_file is not None:
        for name in names:
            try:
                reason = services().checks.check(kind.slug, str(input_dir / name))
            except ChecksBusy as busy:
                raise Refused(str(busy), 503, busy.retry_after) from None
            if reason:
                raise Refused(f"“{name}” was refused: {reason}.")
    return names


def before_upload():
    """Refuse an upload by its declared length, before anything reads it; keep other
    forms (read whole by CSRF protection) small."""
    if request.method != "POST":
        return None
    if request.endpoint != "uploads.new_job":
        request.max_content_length = SMALL_BODY
        return None
    kind = kinds.get((request.view_args or {}).get("slug", ""))
    length = request.content_length or 0
    if kind is not None and length > kind.max_total_bytes + MULTIPART_OVERHEAD:
        _abandon_body()
        return _refusal(
            kind,
            None,
            Refused(
                f"The upload is larger than {filesize(kind.max_total_bytes)}, "
                f"the most {kind.title} takes.",
                413,
            ),
        )
    if kind is not None and length > current_app.config["MAX_CONTENT_LENGTH"]:
        _abandon_body()
        return _refusal(kind, None, _too_large_for_server())
    return None


def _too_large_for_server() -> Refused:
    return Refused(
        f"The upload is larger than {filesize(current_app.config['MAX_CONTENT_LENGTH'])}, "
        "the most this server accepts.",
        413,
    )


def _abandon_body() -> None:
    """Close the connection after this answer instead of reading the rest of the body.

    gunicorn reads (and discards) a body the app left unread before it serves the next
    request on the connection, without a limit; a body it could not read ends the
    connection instead.
    """
    body = request.environ.get("wsgi.input")
    if hasattr(body, "failed"):
        body.failed = True


def _finish_unread_body() -> None:
    """Before refusing a body not (wholly) read: drop a little more of it, so that a browser
    still sending gets the answer rather than a reset; past that, close the connection."""
    try:
        stream = request.stream
    except RequestEntityTooLarge:
        stream = None
    if stream is None or not discard_body(stream, LINGER_BYTES, LINGER_SECONDS):
        _abandon_body()


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


def _refusal(kind, form, refusal: Refused):
    """The refusal next to the form. An htmx submission gets only the message region, so
    the files and options the person chose stay as they are; without JavaScript the whole
    form comes back, filled in, saying what to fix."""
    if is_htmx():
        response = current_app.response_class(
            render_template(
                "partials/form_feedback.html", error=str(refusal), problems=refusal.problems
            ),
            status=refusal.status,
            headers={"HX-Retarget": "#form-feedback", "HX-Reswap": "outerHTML"},
        )
    else:
        if form is None and kind.options is not None:
            form = kind.options(refusal.fields) if refusal.fields else kind.options()
        html = render_template("jobs/new.html", kind=kind, form=form, error=str(refusal))
        response = current_app.response_class(html, status=refusal.status)
    if refusal.retry_after is not None:
        response.headers["Retry-After"] = str(refusal.retry_after)
    return response


def _csrf_problem(token: str | None) -> str | None:
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return None
    try:
        validate_csrf(token)
    except ValidationError as exc:
        return f"Form expired or forged: {exc} Reload the page and try again."
    return None


def _read_body(kind: kinds.JobKind, renew) -> Upload:
    """The form fields and spooled files; raises Refused."""
    settings = services().settings
    mimetype, options = request.mimetype, request.mimetype_params
    header_token = request.headers.get("X-CSRFToken") or request.headers.get("X-CSRF-Token")
    if mimetype == "application/x-www-form-urlencoded":  # a form without files
        request.max_content_length = MAX_FORM_BYTES
        try:
            fields = MultiDict(request.form)
        except RequestEntityTooLarge:
            raise Refused("The form is too large.", 413) from None
        if problem := _csrf_problem(header_token or fields.get("csrf_token")):
            raise Refused(problem)
        return Upload(fields, [])
    if mimetype != "multipart/form-data" or not options.get("boundary"):
        if problem := _csrf_problem(header_token):
            raise Refused(problem)
        raise Refused("The upload must be sent as multipart/form-data.", 400)
    reader = BodyReader(
        request.stream,
        options["boundary"],
        BodyLimits(
            kind_title=kind.title,
            max_files=kind.max_files,
            max_file_bytes=kind.max_total_bytes,
            max_body_bytes=min(
                current_app.config["MAX_CONTENT_LENGTH"],
                kind.max_total_bytes + MULTIPART_OVERHEAD,
            ),
            min_rate=settings.upload_min_rate,
            window=settings.upload_rate_window,
        ),
        spool(),
        _csrf_problem,
        header_token,
        on_progress=renew,
    )
    try:
        return reader.read()
    except Refused:
        if not reader.complete:
            _finish_unread_body()
        raise


@bp.route("/jobs/new/<slug>", methods=["GET", "POST"])
def new_job(slug: str):
    """The upload form of a job kind; a valid submission creates the job and goes to its page."""
    kind = kinds.get(slug)
    if kind is None:
        abort(404)
    if request.method == "GET":
        return _form_response(kind, _blank_form(kind), None)

    svc = services()
    spool().sweep_if_due()
    owner, address = current_owner(), client_address()
    form = None
    upload: Upload | None = None
    job_dir = None
    try:
        with contextlib.ExitStack() as held:
            try:
                # Everything that can refuse without the body is asked before reading it.
                held.callback(svc.caps.take("upload"))
                lease = svc.limits.open_upload(address)
                held.callback(lease.release)
                check_new_job(owner, address)
            except LimitExceeded as exc:
                _finish_unread_body()
                raise Refused(str(exc), exc.status, exc.retry_after) from None
            every = svc.settings.upload_rate_window / 2
            upload = _read_body(kind, lambda: lease.renew(every))
            form = kind.options(upload.fields) if kind.options else None
            if form is not None and not form.validate():
                problems = [
                    f"{field.label.text}: {message}" for field in form for message in field.errors
                ]
                raise Refused("Please correct the highlighted fields.", problems=problems)
            job_id = new_job_id()
            job_dir = svc.store.job_dir(job_id)
            names = save_inputs(kind, job_dir, upload.files)
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
        if job_dir is not None:
            shutil.rmtree(job_dir, ignore_errors=True)
        return _refusal(kind, form, refusal)
    except BaseException:
        if job_dir is not None:
            shutil.rmtree(job_dir, ignore_errors=True)
        raise
    finally:
        if upload is not None:
            upload.discard()  # accepted files live on as hard links in the job folder
    svc.limits.record_job(owner, address, job_id)
    page = url_for("pages.job_page", job_id=job_id)
    if is_htmx():
        return Response(headers={"HX-Redirect": page})
    return redirect(page, code=303)
