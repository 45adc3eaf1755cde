"""Imported once by the jobs' fork server (jobs.sandbox): every kind, with what it imports,
so that each job's process starts with them loaded; boto3 too when files live in S3; and
the fork server's tie to the worker, so that it never outlives it."""

import os

from jobs import kinds, sandbox

sandbox.die_with_parent()
kinds.registry()
if os.environ.get("HEADWAY_STORAGE_URL", "").strip():
    import boto3.s3.transfer  # noqa: F401
    import botocore.config  # noqa: F401
