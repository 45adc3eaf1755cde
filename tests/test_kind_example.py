"""The README's worked example of a job kind, loaded from the README itself and run for real.

Reading the code out of the document (rather than keeping a copy here) means the example
a developer copies is exactly the code this test runs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from jobs import kinds

from .kind_helpers import result_names, run_files

DOC = Path(__file__).resolve().parent.parent / "README.md"
MODULE = "headway_docs_example_words"


def example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    return blocks[0]


@pytest.fixture
def words_kind(tmp_path, monkeypatch):
    """Register the example the way a module outside jobs/kinds is registered."""
    folder = tmp_path / "example"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(example_code(), encoding="utf-8")
    monkeypatch.syspath_prepend(folder)
    monkeypatch.setenv("HEADWAY_KIND_MODULES", f"{os.environ['HEADWAY_KIND_MODULES']},{MODULE}")
    kinds.registry.cache_clear()
    yield kinds.get("words")
    kinds.registry.cache_clear()  # the next lookup sees the usual kinds again


def test_example_kind_runs_end_to_end(store, consumer, words_kind, tmp_path):
    assert words_kind is not None and words_kind.title == "Count words"
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("The cat sat\non the mat\n")
    second.write_text("the END, the end\n")

    job, output = run_files(store, "words", [first, second])

    assert job.status == "succeeded", job.error
    assert result_names(job) == ["words.tsv"]
    assert job.stages == ["Counting", "Writing"] and job.progress == 100.0
    assert [item.status for item in store.items(job.id)] == ["done", "done"]
    lines = (output / "words.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "the\t4"
    assert sorted(lines[1:]) == sorted(["cat\t1", "sat\t1", "on\t1", "mat\t1", "end,\t1", "end\t1"])


def test_example_kind_checks_content_and_reports_errors(store, consumer, words_kind, tmp_path):
    disguised = tmp_path / "notes.txt"
    disguised.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    assert words_kind.check_file(disguised) == "is not a text file"

    blank = tmp_path / "blank.txt"
    blank.write_text("  \n\n")
    job, _ = run_files(store, "words", [blank], ignore_case=False)
    assert job.status == "failed"
    assert job.error == "The files hold no words."
