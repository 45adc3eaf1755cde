"""Running a shipped job kind end to end from test files, as the web layer would submit it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from headway.store import JobState, new_job_id
from jobs import control, kinds

from .conftest import wait_for


def submit_files(store, slug: str, files: list[Path], **options) -> str:
    """Place `files` as the inputs of a new job of kind `slug` and queue it; returns its id.

    The params are the kind's form defaults with `options` on top: what a submitted form's
    `form.data` holds.
    """
    kind = kinds.get(slug)
    job_id = new_job_id()
    input_dir = store.job_dir(job_id) / "input"
    input_dir.mkdir(parents=True)
    for path in files:
        try:
            os.link(path, input_dir / path.name)  # large test files are not copied
        except OSError:
            shutil.copyfile(path, input_dir / path.name)
    params = {**(kind.options().data if kind.options else {}), **options}
    return control.submit(
        kind,
        job_id=job_id,
        owner="kind-tester",
        title=kind.title,
        params=params,
        inputs=[path.name for path in files],
    )


def wait_final(store, job_id: str, timeout: float = 60) -> JobState:
    return wait_for(lambda: (job := store.get(job_id)) and job.finished and job, timeout)


def run_files(store, slug: str, files: list[Path], **options) -> tuple[JobState, Path]:
    """Submit, wait for the final state; returns the job and its output folder."""
    job_id = submit_files(store, slug, files, **options)
    return wait_final(store, job_id), store.job_dir(job_id) / "output"


def log_messages(store, job_id: str, level: str | None = None) -> list[str]:
    return [
        line["msg"] for line in store.log_lines(job_id) if level is None or line["level"] == level
    ]


def result_names(job: JobState) -> list[str]:
    return [file["name"] for file in job.files]
