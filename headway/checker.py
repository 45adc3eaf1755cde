"""`python -m headway.checker`: a child process that runs job kinds' upload checks.

The web process keeps a few of these (headway/web/checks.py) and never runs a kind's
`check_file` itself: a check is ordinary Python that may be slow, quadratic or greedy, and
on the web process's event loop it would stall every other request and stream.

Protocol, one JSON object per line: the child says `{"ready": true}` once the kinds are
imported; then for each request `{"kind": slug, "path": path}` it answers
`{"reason": null | "why the file is refused"}`, or `{"failure": "memory" | "error"}` when
the check itself broke. It exits when its input closes (the web process went away).

Limits: address space (RLIMIT_AS) as given on the command line; CPU time (RLIMIT_CPU) a
little past each check's budget, as a backstop should the parent die mid-check (the
parent kills a child that overruns long before that); a lower scheduling priority, so that
on a busy machine the event loops get the CPU first.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
from pathlib import Path

log = logging.getLogger("headway.checker")


def _limit(memory_bytes: int, cpu_seconds: float) -> None:
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    _cpu_backstop(cpu_seconds)
    os.nice(10)


def _cpu_backstop(budget: float) -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    soft = int(spent + budget * 2 + 5)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _answer(out, message: dict) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def check(slug: str, path: str) -> dict:
    from jobs import kinds

    kind = kinds.get(slug)
    if kind is None or kind.check_file is None:
        return {"reason": None}
    try:
        return {"reason": kind.check_file(Path(path))}
    except MemoryError:
        return {"failure": "memory"}
    except Exception:
        log.exception("check of %s (%s) raised", path, slug)
        return {"failure": "error"}


def main() -> int:
    memory_bytes, budget = int(sys.argv[1]), float(sys.argv[2])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    out = sys.stdout
    sys.stdout = sys.stderr  # a kind that prints must not garble the answers
    from jobs import kinds

    kinds.registry()  # import every kind before saying ready: checks start warm
    _limit(memory_bytes, budget)
    _answer(out, {"ready": True})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            slug, path = str(request["kind"]), str(request["path"])
        except (ValueError, KeyError, TypeError):
            _answer(out, {"failure": "error"})
            continue
        _cpu_backstop(budget)
        _answer(out, check(slug, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
