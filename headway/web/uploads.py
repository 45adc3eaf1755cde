"""New jobs from upload forms: files stream into storage, are checked by content, then queued.

Every limit holds before or while the body streams in (headway/web/upload_body.py); each file
goes into the storage (headway/storage.py) as it arrives, under its key in the new job's
inputs. The kind's content checks run in the checker processes (headway/web/checks.py) on
this node's spooled copy, never on the event loop. Nothing is half-written: a file becomes
visible in storage only once every file has been accepted, any refusal aborts them all, and
the record is created only after that.
"""

from __future__ import annotations

import contextlib
import json
import re
import unicodedata

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
from headway.storage import Storage, StorageError, input_key
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
    storage_unavailable,
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
    """The process's upload spool: the folder on this node that uploads pass through."""
    app = app or current_app
    if "headway_spool" not in app.extensions:
        folder = app.extensions["headway"].settings.instance_path / "uploads"
        app.extensions["headway_spool"] = Spool(folder)
    return app.extensions["headway_spool"]


class InputFiles:
    """Where an upload's files go: the new job's input keys, under names made safe and
    unique. A file is spooled whole on this node only when the kind checks content."""

    def __init__(self, storage: Storage, job_id: str, spool: Spool, keep_local: bool):
        self.storage, self.job_id, self.spool, self.keep_local = storage, job_id, spool, keep_local
        self.taken: set[str] = set()

    def __call__(self, filename: str) -> SpooledFile:
        name = _unique(safe_name(filename, len(self.taken)), self.taken)
        try:
            target = self.storage.new_upload(
                input_key(self.job_id, name), self.spool.directory, self.keep_local
            )
        except (StorageError, OSError):
            raise storage_unavailable() from None
        return SpooledFile(filename, name, target)


def save_inputs(kind: kinds.JobKind, files: list[SpooledFile]) -> list[str]:
    """Check counts and contents (in the checker processes), then commit every file to
    storage; raises Refused. Returns the files' names."""
    if len(files) < kind.min_files:
        raise Refused(f"Choose at least {kind.min_files} file{'s' * (kind.min_files > 1)}.")
    for upload in files:
        if upload.size == 0:
            raise Refused(f"“{upload.name}” is empty.")
    if kind.check_file is not None:
        for upload in files:
            try:
                reason = services().checks.check(kind.slug, str(upload.path))
            except ChecksBusy as busy:
                raise Refused(str(busy), 503, busy.retry_after) from None
            if reason:
                raise Refused(f"“{upload.name}” was refused: {reason}.")
    try:
        for upload in files:
            upload.commit()
    except (StorageError, OSError) as exc:
        current_app.logger.error("could not store an upload: %s", exc)
        raise storage_unavailable() from None
    return [upload.name for upload in files]


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


def _read_body(kind: kinds.JobKind, job_id: str) -> Upload:
    """The form fields and spooled files; raises Refused."""
    svc = services()
    settings = svc.settings
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
        InputFiles(svc.store.storage, job_id, spool(), keep_local=kind.check_file is not None),
        _csrf_problem,
        header_token,
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
    job_id = new_job_id()
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
            upload = _read_body(kind, job_id)
            form = kind.options(upload.fields) if kind.options else None
            if form is not None and not form.validate():
                problems = [
                    f"{field.label.text}: {message}" for field in form for message in field.errors
                ]
                raise Refused("Please correct the highlighted fields.", problems=problems)
            names = save_inputs(kind, upload.files)
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
        _forget(upload, job_id)
        return _refusal(kind, form, refusal)
    except BaseException:
        _forget(upload, job_id)
        raise
    svc.limits.record_job(owner, address, job_id)
    page = url_for("pages.job_page", job_id=job_id)
    if is_htmx():
        return Response(headers={"HX-Redirect": page})
    return redirect(page, code=303)


def _forget(upload: Upload | None, job_id: str) -> None:
    """Leave nothing of a refused or failed upload: its spool files, its unfinished
    uploads, and whatever of it was already committed to storage."""
    if upload is None:
        return
    upload.discard()
    if any(f.committed for f in upload.files):
        with contextlib.suppress(StorageError, OSError):
            services().store.storage.remove_job(job_id)
