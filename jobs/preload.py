"""Imported once by the jobs' fork server (jobs.sandbox): every kind, with what it imports,
so that each job's process starts with them loaded; and the fork server's tie to the
worker, so that it never outlives it."""

from jobs import kinds, sandbox

sandbox.die_with_parent()
kinds.registry()
