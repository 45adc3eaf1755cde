"""Small job kinds with timing control, for tests only (loaded via HEADWAY_KIND_MODULES)."""

from __future__ import annotations

import time

import wtforms
from wtforms import validators

from jobs.kinds import JobContext, JobError, JobKind, JobLimits


class StepOptions(wtforms.Form):
    steps = wtforms.IntegerField(default=10, validators=[validators.NumberRange(1, 10_000)])
    delay = wtforms.FloatField(default=0.05, validators=[validators.NumberRange(0, 10)])
    fail_at = wtforms.IntegerField(default=-1)


def count_steps(ctx: JobContext) -> None:
    """Count to `steps`, sleeping `delay` each step; raise at step `fail_at` if set."""
    r = ctx.reporter
    steps, delay, fail_at = ctx.params["steps"], ctx.params["delay"], ctx.params.get("fail_at", -1)
    r.stage("Prepare", total=1)
    r.advance()
    r.stage("Count", total=steps)
    for i in range(steps):
        if i == fail_at:
            raise RuntimeError(f"boom at step {i}")
        r.item(i % 20, f"step-{i % 20}", 100.0, "done")
        r.advance(current=f"step {i + 1}")
        r.log(f"step {i + 1} of {steps}")
        time.sleep(delay)
    r.stage("Write", total=1)
    ctx.output("count.txt").write_text(f"{steps}\n")
    r.advance()


def fail_once(ctx: JobContext) -> None:
    """Fail on the first attempt, succeed on the next (each runs in a folder of its own)."""
    ctx.reporter.stage("Work", total=2)
    ctx.reporter.advance()
    if ctx.reporter.attempt < 2:
        raise RuntimeError("first attempt fails")
    ctx.reporter.advance()
    ctx.output("ok.txt").write_text("ok\n")


def no_result(ctx: JobContext) -> None:
    ctx.reporter.stage("Work", total=1)
    ctx.reporter.advance()


def refuse(ctx: JobContext) -> None:
    raise JobError("Nothing in these files can be processed.")


_common = dict(options=StepOptions, max_files=5, min_files=0, stages=(("Work", 1),))
KINDS = [
    JobKind(
        slug="steps",
        title="Count steps",
        description="Counts with a delay.",
        work=count_steps,
        **{**_common, "stages": (("Prepare", 1), ("Count", 8), ("Write", 1))},
    ),
    JobKind(
        slug="flaky",
        title="Flaky",
        description="Fails once, then succeeds.",
        work=fail_once,
        retries=2,
        retry_delay=0.1,
        **_common,
    ),
    JobKind(
        slug="empty", title="No result", description="Writes nothing.", work=no_result, **_common
    ),
    JobKind(
        slug="refuse",
        title="Refuses",
        description="Raises JobError.",
        work=refuse,
        retries=3,
        **_common,
    ),
]


def must_be_text(path) -> str | None:
    """Accept UTF-8 text only: decided by the bytes, never by the name."""
    data = path.read_bytes()[:4096]
    if b"\0" in data:
        return "is not a text file"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(data) - 3:  # a character cut at the sample's end is fine
            return "is not UTF-8 text"
    return None


def count_lines(ctx: JobContext) -> None:
    ctx.reporter.stage("Work", total=len(ctx.inputs))
    with ctx.output("lines.txt").open("w") as out:
        for path in ctx.inputs:
            out.write(f"{path.name}\t{len(path.read_text().splitlines())}\n")
            ctx.reporter.advance(current=path.name)


KINDS.append(
    JobKind(
        slug="lines",
        title="Count lines",
        description="Counts lines of text files.",
        work=count_lines,
        check_file=must_be_text,
        accept="text/*",
        accept_label="text files",
        min_files=1,
        max_files=3,
        max_total_bytes=1_000_000,
        options=StepOptions,
        stages=(("Work", 1),),
    )
)


# -- kinds that misbehave, each under limits small enough to cross quickly (tests/test_sandbox.py)


def hog_memory(ctx: JobContext) -> None:
    ctx.reporter.stage("Work", total=1)
    hoard = []
    while True:
        hoard.append(bytearray(10 * 1024 * 1024))


def spin(ctx: JobContext) -> None:
    """Busy in one long computation that never reports (nor checks for a cancel)."""
    ctx.reporter.stage("Work", total=1)
    n = 0
    while True:
        n += 1


def sleep_silently(ctx: JobContext) -> None:
    """Says nothing for `delay` seconds (as if inside C code), then finishes."""
    ctx.reporter.stage("Work", total=1)
    time.sleep(ctx.params["delay"])
    ctx.output("slept.txt").write_text("done\n")
    ctx.reporter.advance()


def flood(ctx: JobContext) -> None:
    ctx.reporter.stage("Work", total=1)
    chunk = b"x" * 1024 * 1024
    with ctx.output("flood.bin").open("wb") as out:
        while True:
            out.write(chunk)


def flood_files(ctx: JobContext) -> None:
    """Many files, each well under the output limit, that add up past it."""
    ctx.reporter.stage("Work", total=1)
    chunk = b"x" * 1024 * 1024
    for n in range(10_000):
        ctx.output(f"part-{n}.bin").write_bytes(chunk)
        time.sleep(0.01)


def leak_files(ctx: JobContext) -> None:
    ctx.reporter.stage("Work", total=1)
    leaked = [ctx.output(f"{n}.txt").open("w") for n in range(100_000)]
    del leaked


def crash(ctx: JobContext) -> None:
    import os
    import signal

    ctx.reporter.stage("Work", total=1)
    os.kill(os.getpid(), signal.SIGSEGV)


_limits = JobLimits(memory=400 * 10**6, cpu=2, wall=3, output=5 * 10**6, open_files=64)
KINDS += [
    JobKind(
        slug=slug,
        title=slug,
        description=work.__doc__ or slug,
        work=work,
        **{**_common, "limits": _limits},
    )
    for slug, work in [
        ("hog", hog_memory),
        ("flood", flood),
        ("flood-files", flood_files),
        ("leak-files", leak_files),
        ("crash", crash),
    ]
]
KINDS += [
    JobKind(
        slug="spin",
        title="spin",
        description="Spins.",
        work=spin,
        **{**_common, "limits": JobLimits(cpu=2, wall=600)},
    ),
    JobKind(slug="spin-forever", title="spin", description="Spins.", work=spin, **_common),
    JobKind(
        slug="sleepy",
        title="sleepy",
        description="Sleeps.",
        work=sleep_silently,
        **{**_common, "limits": JobLimits(wall=3)},
    ),
]


def two_results(ctx: JobContext) -> None:
    ctx.reporter.stage("Work", total=1)
    ctx.output("a.txt").write_text("a\n")
    ctx.output("b.txt").write_text("b\n")
    ctx.reporter.advance()


def slow_or_greedy(path) -> str | None:
    """A deliberately bad check, steered by the file: `spin N` burns N s of CPU in pure
    Python (holding the GIL, as csv.Sniffer does), `eat N` allocates N MB, `crash` exits."""
    words = path.read_bytes()[:64].split()
    if words[:1] == [b"spin"]:
        end = time.monotonic() + float(words[1])
        while time.monotonic() < end:
            sum(range(1000))
    elif words[:1] == [b"eat"]:
        hog = bytearray(int(words[1]) * 1024 * 1024)
        hog[-1] = 1
    elif words[:1] == [b"crash"]:
        import os

        os._exit(3)
    elif words[:1] == [b"refuse"]:
        return "says so itself"
    return None


KINDS += [
    JobKind(
        slug="pair",
        title="Two results",
        description="Writes two files.",
        work=two_results,
        **_common,
    ),
    JobKind(
        slug="slowcheck",
        title="Slow check",
        description="Its upload check takes as long as the file says.",
        work=count_lines,
        check_file=slow_or_greedy,
        min_files=1,
        max_files=30,
        max_total_bytes=1_000_000,
    ),
]


def many_items(ctx: JobContext) -> None:
    """`steps` items, each pending, then running, then done (every 97th fails), with a log
    line each: what a large batch (500 images) looks like on its page."""
    r, count, delay = ctx.reporter, ctx.params["steps"], ctx.params["delay"]
    r.stage("Work", total=count)
    for i in range(count):
        r.item(i, f"photo-{i:03}.jpg", 0, "pending")
    for i in range(count):
        r.item(i, f"photo-{i:03}.jpg", 50, "running")
        time.sleep(delay)
        failed = i % 97 == 96
        status, reason = ("failed", "could not be read") if failed else ("done", "")
        r.item(i, f"photo-{i:03}.jpg", 100, status, reason=reason)
        r.log(f"photo-{i:03}.jpg: {'could not be read' if failed else 'converted'}")
        r.advance(failed=int(failed), current=f"photo-{i:03}.jpg")
    ctx.output("done.txt").write_text(f"{count}\n")


KINDS.append(
    JobKind(
        slug="batch",
        title="Batch",
        description="Many items with bars of their own.",
        work=many_items,
        **_common,
    )
)


def digest_inputs(ctx: JobContext) -> None:
    """Count `steps` with `delay` (long enough to kill its worker; a retry skips it), then
    write the inputs' line counts and SHA-256 sums: results that prove which bytes it read."""
    import hashlib

    r = ctx.reporter
    steps = ctx.params["steps"] if r.attempt == 1 else 1
    r.stage("Count", total=steps)
    for i in range(steps):
        r.check()
        r.advance(current=f"step {i + 1}")
        time.sleep(ctx.params["delay"])
    r.stage("Digest", total=len(ctx.inputs))
    with ctx.output("lines.txt").open("w") as lines, ctx.output("sha256.txt").open("w") as sums:
        for path in ctx.inputs:
            digest, count = hashlib.sha256(), 0
            with path.open("rb") as data:
                for chunk in iter(lambda data=data: data.read(1 << 20), b""):
                    digest.update(chunk)
                    count += chunk.count(b"\n")
            lines.write(f"{path.name}\t{count}\n")
            sums.write(f"{digest.hexdigest()}  {path.name}\n")
            r.advance(current=path.name)


KINDS.append(
    JobKind(
        slug="digest",
        title="Digest",
        description="Counts, then sums its text files.",
        work=digest_inputs,
        check_file=must_be_text,
        accept="text/*",
        min_files=1,
        max_files=3,
        max_total_bytes=64 * 1024 * 1024,
        options=StepOptions,
        stages=(("Count", 8), ("Digest", 2)),
    )
)
