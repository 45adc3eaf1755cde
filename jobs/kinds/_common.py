"""Helpers shared by the shipped job kinds (this module defines no kind itself)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

import wtforms

from jobs.kinds import JobError


def read_options(options: type[wtforms.Form], params: dict[str, Any]) -> dict[str, Any]:
    """Validate a job's params with its kind's form; returns the form's data.

    The web layer validated them already; checking again here keeps a worker safe from a
    record written by an older version, and fills in defaults for options added since.
    """
    form = options(data=params)
    if not form.validate():
        problems = "; ".join(
            f"{form[name].label.text}: {' '.join(errors)}" for name, errors in form.errors.items()
        )
        raise JobError(f"Invalid options: {problems}")
    return form.data


class UniqueNames:
    """Hands out file names that never collide, not even on a case-insensitive file system."""

    def __init__(self, reserved: tuple[str, ...] = ()):
        self._taken = {name.casefold() for name in reserved}

    def take(self, name: str) -> str:
        """`name`, or `name` with "-2", "-3"... before its extension if it is already taken."""
        path = PurePath(name)
        candidate, number = name, 1
        while candidate.casefold() in self._taken:
            number += 1
            candidate = f"{path.stem}-{number}{path.suffix}"
        self._taken.add(candidate.casefold())
        return candidate
