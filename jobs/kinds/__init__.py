"""Job kinds: one module per kind in this package, each defining `KIND = JobKind(...)`.

A module outside the package may define several as `KINDS = [...]`.

Adding a module here is all it takes to add a kind: the registry finds it by itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import pkgutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import wtforms

from jobs.reporter import ProgressReporter


class JobError(Exception):
    """A failure to show to the person as it is (and not to retry): bad input, no result."""


@dataclasses.dataclass
class JobContext:
    """What a work function gets: the saved inputs, the options, where to write, the reporter."""

    job_id: str
    inputs: list[Path]
    params: dict[str, Any]
    output_dir: Path
    reporter: ProgressReporter

    def output(self, name: str) -> Path:
        """The path of a result file (results are the files in `output_dir`)."""
        return self.output_dir / name


@dataclasses.dataclass(frozen=True)
class JobLimits:
    """What one attempt of a job may use; crossing a limit fails the job (jobs.sandbox).

    Sizes are in bytes, times in seconds. `HEADWAY_JOB_LIMITS` overrides them (README).
    """

    memory: int = 2 * 10**9  # address space of the job's process
    cpu: float = 2 * 3600  # CPU time
    wall: float = 4 * 3600  # time from start to end
    output: int = 8 * 10**9  # results and temporary files together (and any one file)
    open_files: int = 256


@dataclasses.dataclass(frozen=True)
class JobKind:
    """Everything Headway needs to know about one kind of job."""

    slug: str
    title: str
    description: str
    work: Callable[[JobContext], None]
    options: type[wtforms.Form] | None = None  # form fields with defaults and validation
    # given a saved upload, return None to accept it or a reason to refuse it (by content)
    check_file: Callable[[Path], str | None] | None = None
    accept: str = ""  # hint for the browser's file picker, e.g. "image/*"
    accept_label: str = "any file"
    min_files: int = 1
    max_files: int = 100
    max_total_bytes: int = 1024**3
    stages: Sequence[tuple[str, float]] = (("Working", 1.0),)
    rate_unit: str = "items"
    retries: int = 0
    retry_delay: float = 2.0
    limits: JobLimits = JobLimits()
    # Its items are independent and item i is input i: "Retry failed items" may run a new
    # attempt with the failed items' inputs alone.
    retry_items: bool = False


@functools.cache
def registry() -> dict[str, JobKind]:
    """Every kind in this package, plus those in the modules named by HEADWAY_KIND_MODULES."""
    names = [f"{__name__}.{info.name}" for info in pkgutil.iter_modules(__path__)]
    names += [n.strip() for n in os.environ.get("HEADWAY_KIND_MODULES", "").split(",") if n.strip()]
    kinds = {}
    for name in names:
        module = importlib.import_module(name)
        for kind in [getattr(module, "KIND", None), *getattr(module, "KINDS", ())]:
            if isinstance(kind, JobKind):
                kinds[kind.slug] = kind
    return dict(sorted(kinds.items()))


def get(slug: str) -> JobKind | None:
    return registry().get(slug)
