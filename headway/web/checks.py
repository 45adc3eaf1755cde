"""Upload checks off the event loop: a small pool of long-lived checker processes.

A kind's `check_file` is ordinary Python: csv.Sniffer is quadratic in its sample, a zip's
directory of 300,000 entries takes seconds and hundreds of MB to read. In a thread it would
still hold the GIL and stall every stream of the process, so checks run in separate
processes (`python -m headway.checker`), each with an address-space cap, reused from one
check to the next and killed (and later replaced) when a check overruns its time budget.

At most `processes` checks run at once per web process; more wait their turn, each with its
own deadline. Waiting, like reading a child's answer, uses `select.poll`, which gevent makes
cooperative: a greenlet waiting for a check costs the loop nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time

from headway.settings import ROOT

log = logging.getLogger("headway.checks")

START_SECONDS = 60.0  # a fresh checker imports every kind before it is ready


class ChecksBusy(Exception):
    """No checker became free in time: the server is busy, try again shortly."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class _Gone(Exception):
    """The checker process stopped (crashed, or was killed by a limit)."""


@dataclasses.dataclass(frozen=True)
class CheckLimits:
    processes: int
    seconds: float
    memory_bytes: int
    wait_seconds: float


class _Checker:
    """One checker process and the unread part of its answers."""

    def __init__(self, limits: CheckLimits):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headway.checker",
                str(limits.memory_bytes),
                str(limits.seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        self._buffer = b""
        self.ready = False

    def _read_line(self, deadline: float) -> bytes | None:
        """The next line the child wrote, or None when the deadline passed first."""
        fd = self.process.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if not poller.poll(math.ceil(remaining * 1000)):
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _Gone
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def wait_ready(self) -> None:
        line = self._read_line(time.monotonic() + START_SECONDS)
        if line is None or not json.loads(line).get("ready"):
            raise _Gone
        self.ready = True

    def ask(self, slug: str, path: str, seconds: float) -> dict | None:
        """The child's answer, or None if it did not answer within `seconds`."""
        request = json.dumps({"kind": slug, "path": path}).encode() + b"\n"
        try:
            os.write(self.process.stdin.fileno(), request)
        except OSError:
            raise _Gone from None
        line = self._read_line(time.monotonic() + seconds)
        return None if line is None else json.loads(line)

    def stop(self, *, kill: bool) -> None:
        if kill and self.process.poll() is None:
            self.process.kill()
        for pipe in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                pipe.close()
        try:
            self.process.wait(5)  # without kill: the child leaves when its input closes
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class CheckPool:
    """Bounded, reusable checker processes; `check()` returns a refusal reason or None."""

    def __init__(self, limits: CheckLimits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.processes)
        self._idle: list[_Checker] = []
        self._lock = threading.Lock()
        self._closed = False

    def check(self, slug: str, path: str) -> str | None:
        """Run the kind's check of one file; raises ChecksBusy if no checker came free."""
        limits = self.limits
        if not self._slots.acquire(timeout=limits.wait_seconds):
            raise ChecksBusy(
                "The server is busy checking other uploads; try again in a moment.",
                retry_after=max(1, math.ceil(limits.seconds)),
            )
        try:
            return self._check(slug, path)
        finally:
            self._slots.release()

    def _check(self, slug: str, path: str) -> str | None:
        checker = self._take()
        try:
            if not checker.ready:
                checker.wait_ready()
            answer = checker.ask(slug, path, self.limits.seconds)
        except _Gone:
            checker.stop(kill=True)
            log.warning("checker for %s stopped while checking %s", slug, path)
            return "could not be checked (the check stopped unexpectedly)"
        if answer is None:
            checker.stop(kill=True)  # a fresh one takes its place on the next check
            log.warning("check of %s (%s) overran %g s", path, slug, self.limits.seconds)
            return f"could not be checked within {self.limits.seconds:g} s"
        self._give_back(checker)
        if answer.get("failure") == "memory":
            return (
                "could not be checked within the memory limit "
                f"({self.limits.memory_bytes // 1024**2} MB)"
            )
        if answer.get("failure"):
            return "could not be checked (the check failed)"
        return answer.get("reason")

    def _take(self) -> _Checker:
        with self._lock:
            while self._idle:
                checker = self._idle.pop()
                if checker.process.poll() is None:
                    return checker
                checker.stop(kill=True)
        return _Checker(self.limits)

    def _give_back(self, checker: _Checker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(checker)
                return
        checker.stop(kill=False)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for checker in idle:
            checker.stop(kill=False)


_pools: dict[tuple, CheckPool] = {}
_pools_lock = threading.Lock()


def shared_pool(limits: CheckLimits) -> CheckPool:
    """The process's pool for these limits: apps created in one process share it, and a
    forked process makes its own (the checkers' pipes belong to the parent)."""
    key = (os.getpid(), limits)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = CheckPool(limits)
        return pool


@atexit.register
def _close_pools() -> None:
    for (pid, _), pool in list(_pools.items()):
        if pid == os.getpid():
            pool.close()
