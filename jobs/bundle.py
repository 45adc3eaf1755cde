"""The "Download all" zip of a job's results, built by the worker when the job ends.

Built in the worker so that no web request ever reads gigabytes to serve it: the web side
only sends the finished file (or 404 when there is none). Stored, not compressed: the
results are mostly compressed already, and storing is as fast as copying.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

from headway.storage import BUNDLE_NAME

__all__ = ["BUNDLE_NAME", "build_bundle", "bundle_path"]


def bundle_path(job_dir: Path) -> Path:
    return job_dir / BUNDLE_NAME


def build_bundle(job_dir: Path, files: list[Path]) -> Path | None:
    """Zip `files` (the job's results) into the job folder; only for two or more results.

    Written to a temporary name and renamed, so a bundle is never seen half-written.
    """
    if len(files) < 2:
        return None
    fd, name = tempfile.mkstemp(dir=job_dir, prefix=".all-files.", suffix=".zip")
    partial = Path(name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED) as zf:
            for path in files:
                zf.write(path, path.name)
        os.replace(partial, bundle_path(job_dir))
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return bundle_path(job_dir)
