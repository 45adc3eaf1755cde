"""Each job runs in a process of its own: a job that crosses a limit, crashes or hangs fails
alone, with a plain message, while the worker and the other jobs carry on."""

from __future__ import annotations

import dataclasses

import pytest

from headway.settings import Settings
from jobs import control, kinds, sandbox
from jobs.runner import reap_stale_jobs

from .conftest import wait_for
from .kind_helpers import submit_files, wait_final


def run(store, slug: str, **params):
    job_id = submit_files(store, slug, [], **params)
    return wait_final(store, job_id, timeout=90)


def assert_failed_alone(store, job, message: str) -> None:
    assert job.status == "failed", job
    assert job.error == message
    assert not (store.job_dir(job.id) / "output").exists()  # partial output removed
    assert not (store.job_dir(job.id) / "scratch").exists()
    # The worker carries on: the next job runs to the end.
    after = run(store, "steps", steps=3, delay=0)
    assert after.status == "succeeded", after.error


def test_a_job_that_allocates_without_end_fails_for_memory(store, consumer):
    job = run(store, "hog")
    assert_failed_alone(store, job, "The job was stopped: it used more than 400 MB of memory.")


def test_a_job_that_computes_without_end_fails_for_cpu_time(store, consumer):
    job = run(store, "spin")
    assert_failed_alone(store, job, "The job was stopped: it used more than 2 s of CPU time.")


def test_a_job_past_its_wall_time_is_stopped(store, consumer):
    job = run(store, "sleepy", delay=60)
    assert_failed_alone(store, job, "The job was stopped: it ran for more than 3 s.")


@pytest.mark.parametrize("slug", ["flood", "flood-files"])
def test_a_job_whose_output_grows_past_its_limit_is_stopped(store, consumer, slug):
    job = run(store, slug)
    assert_failed_alone(store, job, "The job was stopped: it produced more than 5 MB of output.")


def test_a_job_that_opens_too_many_files_is_stopped(store, consumer):
    job = run(store, "leak-files")
    assert_failed_alone(store, job, "The job was stopped: it opened more than 64 files at once.")


def test_a_job_whose_process_crashes_fails_with_the_signal(store, consumer):
    job = run(store, "crash")
    assert_failed_alone(store, job, "Unexpected error: The job's process crashed (SIGSEGV).")


def test_an_exception_keeps_its_type_and_message(store, consumer):
    job = run(store, "steps", steps=10, delay=0, fail_at=2)
    assert job.status == "failed"
    assert job.error == "Unexpected error: RuntimeError: boom at step 2"


def test_cancel_stops_a_job_busy_in_one_long_computation_at_once(store, consumer):
    job_id = submit_files(store, "spin-forever", [])
    wait_for(lambda: store.get(job_id).status == "running")
    control.cancel(store.get(job_id), store)
    # The job never reports, so only its parent can stop it: by killing its process.
    job = wait_final(store, job_id, timeout=10)
    assert job.status == "cancelled"
    assert not (store.job_dir(job_id) / "output").exists()


def test_the_parent_keeps_a_silent_job_alive(store, consumer, monkeypatch):
    """Heartbeats come from the worker, not the job: a job that says nothing for longer than
    the heartbeat timeout (as inside one long C call) is not taken for dead."""
    monkeypatch.setattr(store, "settings", dataclasses.replace(store.settings, heartbeat_timeout=1))
    job_id = submit_files(store, "sleepy", [], delay=2.5)
    wait_for(lambda: store.get(job_id).status == "running")
    while not (job := store.get(job_id)).finished:
        reap_stale_jobs()  # what the sweep and every page view do
    assert job.status == "succeeded", job.error


def test_limits_come_from_the_kind_with_the_settings_laid_over():
    kind = kinds.get("hog")
    plain = sandbox.limits_for(kind, Settings())
    assert plain == kind.limits
    settings = Settings(job_limits=(("", "memory", 3e9), ("hog", "memory", 5e8), ("", "wall", 60)))
    limits = sandbox.limits_for(kind, settings)
    assert (limits.memory, limits.wall, limits.cpu) == (500_000_000, 60, kind.limits.cpu)
    assert sandbox.limits_for(kinds.get("steps"), settings).memory == 3_000_000_000


def test_a_misspelt_limit_setting_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("HEADWAY_JOB_LIMITS", "memory=4G,cpu=lots")
    with pytest.raises(ValueError, match="cannot read 'cpu=lots'"):
        Settings.from_env()
