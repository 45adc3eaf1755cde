"""Each attempt of a job runs in a process of its own, with limits on what it may use.

The worker thread that Huey hands the job to (the parent) starts the job's process from a
fork server: a clean, single-threaded process that has imported every kind already, so a
start costs milliseconds and never forks a threaded worker. The job's process sets its
limits on itself (memory as address space, CPU time, file size, open files), makes its own
process group, and dies with the fork server, which dies with the worker. It reports
progress through its own ProgressReporter, as job code always did, and sends how it ended
through a pipe.

The parent watches it: it writes the job's heartbeat (so a job busy inside C code still
looks alive, and a dead worker still shows as `interrupted`), kills it at once when the job
is cancelled, when it runs past its wall time or when its files grow past the output limit,
and turns however it ended into what the runner raises: nothing, JobCancelled, JobError
(with a message a person understands) or JobCrashed (retried if the kind allows).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import resource
import shutil
import signal
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import redis

from headway import storage as file_storage
from headway.connection import redis_client
from headway.settings import Settings
from headway.store import JobStore
from jobs.bundle import build_bundle
from jobs.kinds import JobContext, JobError, JobKind, JobLimits
from jobs.reporter import JobCancelled, ProgressReporter

log = logging.getLogger("headway.sandbox")

FINAL_WRITE_PATIENCE = 600.0  # seconds a final state waits for an unreachable Redis
POLL_SECONDS = 0.2  # how often the parent looks at the job's record for a cancel
OUTPUT_CHECK_SECONDS = 1.0
EXIT_GRACE_SECONDS = 5.0  # after its last word, a process that does not exit is killed
PR_SET_PDEATHSIG = 1


class JobCrashed(Exception):
    """The job's code raised an unexpected exception, or its process died without a word.
    Its text reads like "RuntimeError: boom"; Huey retries it if the kind allows."""


@dataclasses.dataclass(frozen=True)
class Attempt:
    """Everything the job's process needs: it reads nothing from the environment."""

    job_id: str
    kind: JobKind
    inputs: list[Path]  # in the attempt's private folder, fetched from storage first
    params: dict[str, Any]
    output_dir: Path  # results, stored under the job's keys once the work is done
    scratch_dir: Path  # the process's TMPDIR: temporary files count towards its output
    attempt: int
    floor: float
    limits: JobLimits
    settings: Settings
    redis_url: str
    input_keys: tuple[str, ...] = ()  # the storage keys of `inputs`, in the same order


def limits_for(kind: JobKind, settings: Settings) -> JobLimits:
    """The kind's own limits, with HEADWAY_JOB_LIMITS laid over them (a kind's own line
    wins over one for every kind)."""
    general = {name: value for slug, name, value in settings.job_limits if not slug}
    specific = {name: value for slug, name, value in settings.job_limits if slug == kind.slug}
    changes = {**general, **specific}
    for name in ("memory", "output", "open_files"):
        if name in changes:
            changes[name] = int(changes[name])
    return dataclasses.replace(kind.limits, **changes)


# -- the parent's side --------------------------------------------------------------------


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["jobs.preload"])
    return context


def warm_up() -> None:
    """Start the fork server now, so the first job does not wait for its imports. Call it
    from the main thread: the fork server lives as long as the thread that started it."""
    from multiprocessing import forkserver

    _context()
    forkserver.ensure_running()


def run(attempt: Attempt, store: JobStore) -> None:
    """Run the attempt in its own process and wait for it; raise as it ended."""
    context = _context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=_job_process, args=(sender, attempt), name=f"headway-job-{attempt.job_id[:8]}"
    )
    attempt.scratch_dir.mkdir(parents=True, exist_ok=True)
    watch = _Watch(process, receiver, attempt, store)
    outcome: tuple = ("crash", "The job's process could not be started.")
    try:
        process.start()
        sender.close()
        outcome = watch.wait()
    finally:
        sender.close()
        # A process that said how it ended gets a moment to exit; any other is killed now.
        _stop(process, EXIT_GRACE_SECONDS if watch.heard else 0)
        receiver.close()
        shutil.rmtree(attempt.scratch_dir, ignore_errors=True)
    _raise_for(outcome, attempt)


class _Watch:
    """The parent's loop: heartbeat, cancel, wall time and output size, until the end."""

    def __init__(self, process, receiver, attempt: Attempt, store: JobStore):
        self.process, self.receiver, self.attempt, self.store = process, receiver, attempt, store
        self.job_id = attempt.job_id
        self.redis_down = False
        self.heard = False  # the job's process sent how it ended

    def wait(self) -> tuple:
        limits = self.attempt.limits
        start = time.monotonic()
        next_beat = next_output_check = 0.0
        while True:
            ready = multiprocessing.connection.wait(
                [self.receiver, self.process.sentinel], POLL_SECONDS
            )
            if self.receiver in ready:
                try:
                    outcome = self.receiver.recv()
                    self.heard = True
                    return outcome
                except EOFError:  # died without a word: judged by how it died
                    pass
            if self.process.sentinel in ready or self.receiver in ready:
                self.process.join()
                return _judge_exit(self.process.exitcode)
            now = time.monotonic()
            if now - start > limits.wall:
                return ("wall",)
            if now >= next_output_check:
                next_output_check = now + OUTPUT_CHECK_SECONDS
                if _folder_bytes(self.attempt.output_dir, self.attempt.scratch_dir) > limits.output:
                    return ("output",)
            if now >= next_beat:
                next_beat = now + self.attempt.settings.heartbeat_interval
                stop = self._beat()
            else:
                stop = self._cancel_wanted()
            if stop:
                return ("cancelled",)

    def _beat(self) -> bool:
        """Write the heartbeat; True if the job must stop (cancelled, finished, gone)."""
        try:
            result = self.store.update(self.job_id, {"heartbeat": time.time()})
        except redis.RedisError as exc:
            self._unreachable(exc)
            return False
        self._reachable()
        return result.cancel_requested if result.ok else result.reason in ("final", "missing")

    def _cancel_wanted(self) -> bool:
        try:
            wanted = self.store.stop_wanted(self.job_id)
        except redis.RedisError as exc:
            self._unreachable(exc)
            return False
        self._reachable()
        return wanted

    def _unreachable(self, exc: Exception) -> None:
        if not self.redis_down:
            log.warning("job %s: redis unreachable (%s); the job goes on", self.job_id, exc)
            self.redis_down = True

    def _reachable(self) -> None:
        self.redis_down = False


def _folder_bytes(*folders: Path) -> int:
    total = 0
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                with contextlib.suppress(OSError):  # removed while we counted
                    total += os.lstat(os.path.join(root, name)).st_size
    return total


def _judge_exit(code: int | None) -> tuple:
    if code is not None and code < 0:
        number = -code
        if number == signal.SIGXCPU:
            return ("cpu",)
        if number == signal.SIGXFSZ:
            return ("output",)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        if number == signal.SIGKILL:
            return (
                "crash",
                f"The job's process was killed ({name}), most likely because "
                "the machine ran out of memory.",
            )
        return ("crash", f"The job's process crashed ({name}).")
    return ("crash", f"The job's process exited with status {code} without a result.")


def _stop(process, grace: float) -> None:
    """Kill the job's process group (and so anything the job started), then reap it."""
    if process.pid is None:
        return
    process.join(grace)
    for kill in (lambda: os.killpg(process.pid, signal.SIGKILL), process.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill()
    process.join()


def _raise_for(outcome: tuple, attempt: Attempt) -> None:
    what, *detail = outcome
    limits = attempt.limits
    if what == "ok":
        return
    if what == "cancelled":
        raise JobCancelled(attempt.job_id)
    if what == "refused":
        raise JobError(detail[0])
    if what == "crash":
        raise JobCrashed(detail[0])
    limit_messages = {
        "memory": f"used more than {amount(limits.memory)} of memory",
        "cpu": f"used more than {duration(limits.cpu)} of CPU time",
        "wall": f"ran for more than {duration(limits.wall)}",
        "output": f"produced more than {amount(limits.output)} of output",
        "open_files": f"opened more than {limits.open_files} files at once",
    }
    log.warning("job %s: stopped at its %s limit", attempt.job_id, what)
    raise JobError(f"The job was stopped: it {limit_messages[what]}.")


def amount(size: float) -> str:
    """A limit's size as people read it: 2 GB, 500 MB, 1.5 GB."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{size:.0f} bytes"


def duration(seconds: float) -> str:
    for unit, scale in (("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{seconds:.0f} s"


# -- the job's side -------------------------------------------------------------------------


def _job_process(sender, attempt: Attempt) -> None:
    """The job's process: confine itself, run the kind's work, send how it ended."""
    _confine(attempt)
    outcome = _work(attempt)
    sender.send(outcome)
    sender.close()


def die_with_parent() -> None:
    """Be killed when the thread that started this process ends: the fork server with the
    worker, a job's process with the fork server. (The fork server alone would outlive the
    worker while any job runs: each job's process holds its "alive" pipe open.)"""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent went before the line above took effect
        os._exit(1)


def _confine(attempt: Attempt) -> None:
    os.setpgid(0, 0)  # a group of its own: stopping the job stops what it started too
    die_with_parent()
    limits = attempt.limits
    cpu = math.ceil(limits.cpu)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output, limits.output))  # EFBIG
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.environ["TMPDIR"] = str(attempt.scratch_dir)
    tempfile.tempdir = str(attempt.scratch_dir)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("HEADWAY_LOG_LEVEL", "info").upper(),
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
        )


def _work(attempt: Attempt) -> tuple:
    store = JobStore(redis_client(attempt.redis_url), attempt.settings)
    reporter = ProgressReporter(
        store,
        attempt.job_id,
        attempt.kind.stages,
        attempt=attempt.attempt,
        floor=attempt.floor,
        rate_unit=attempt.kind.rate_unit,
        heartbeat_interval=math.inf,  # the parent beats; this process writes what changed
    )
    context = JobContext(
        job_id=attempt.job_id,
        inputs=attempt.inputs,
        params=attempt.params,
        output_dir=attempt.output_dir,
        reporter=reporter,
    )
    try:
        with reporter:
            storage = file_storage.for_settings(attempt.settings)
            _fetch_inputs(storage, attempt)
            attempt.kind.work(context)
            output = attempt.output_dir
            files = sorted((p for p in output.iterdir() if p.is_file()), key=lambda p: p.name)
            if not files:
                raise JobError("The job finished without producing a result file.")
            bundle = build_bundle(output.parent, files)  # "Download all", ready before it shows
            for path in files:
                storage.put(path, file_storage.output_key(attempt.job_id, path.name))
            if bundle is not None:
                storage.put(bundle, file_storage.bundle_key(attempt.job_id))
            # Waits out a Redis outage, so that the `complete` signal that marks the job
            # succeeded finds its result written.
            reporter.flush_final(
                FINAL_WRITE_PATIENCE,
                files=[{"name": p.name, "size": p.stat().st_size} for p in files],
            )
    except JobCancelled:
        return ("cancelled",)
    except JobError as exc:
        return ("refused", str(exc))
    except MemoryError:
        return ("memory",)
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            return ("output",)
        if exc.errno == errno.EMFILE:
            return ("open_files",)
        return _crashed(attempt, exc)
    except Exception as exc:
        return _crashed(attempt, exc)
    return ("ok",)


def _fetch_inputs(storage: file_storage.Storage, attempt: Attempt) -> None:
    """The inputs from storage into the attempt's own folder (a hard link when the storage
    is the instance folder), before the work starts: the job reads local files."""
    for key, path in zip(attempt.input_keys, attempt.inputs, strict=True):
        try:
            storage.fetch(key, path)
        except KeyError:
            raise JobError(
                f"The uploaded file “{path.name}” is no longer kept; start a new job."
            ) from None


def _crashed(attempt: Attempt, exc: Exception) -> tuple:
    if any(words in str(exc).lower() for words in ("out of memory", "insufficient memory")):
        return ("memory",)  # a C parser's own words (expat, zlib) for MemoryError
    log.error(
        "job %s: unexpected error\n%s",
        attempt.job_id,
        "".join(traceback.format_exception(exc)).rstrip(),
    )
    return ("crash", f"{type(exc).__name__}: {exc}")
