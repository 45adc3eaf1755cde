"""A bench-only job kind that takes any one file up to 3 GiB, for the upload benchmark.

Loaded by the web process through HEADWAY_KIND_MODULES=bench.upload_kind; never queued work.
"""

from __future__ import annotations

from jobs.kinds import JobContext, JobKind


def _keep(ctx: JobContext) -> None:
    """Nothing to do: the benchmark measures receiving the upload, not the work."""
    ctx.reporter.stage("Working", total=1)
    ctx.reporter.advance()


KIND = JobKind(
    slug="bench-upload",
    title="Bench upload",
    description="Takes any one file; does nothing with it.",
    work=_keep,
    max_files=1,
    max_total_bytes=3 * 1024**3,
)
