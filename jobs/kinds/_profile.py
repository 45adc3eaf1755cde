"""Profiling a table one row at a time, in bounded memory, and its HTML report.

Used by the spreadsheet kind. A column's type is the narrowest one that fits every value
that is not missing: boolean, integer, float (integers and decimals), date (ISO 8601) or
text. Numbers get min, max and mean; dates min and max; text and booleans their most
common values (exact until a column has more distinct values than its share of a fixed
budget, approximate after).
"""

from __future__ import annotations

import datetime
import html
import math
import re
from collections import Counter
from typing import Any

MISSING = frozenset({"", "na", "n/a", "null", "none", "nan", "-"})
BOOLEANS = {"true": True, "false": False, "yes": True, "no": False}
LONGEST_TOKEN = max(map(len, [*MISSING, *BOOLEANS]))
# ASCII digits only (\d would take Arabic-Indic digits too); no leading zeros, so codes
# like "00123" stay text.
INTEGER = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
FLOAT = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
DECIMAL_COMMA = re.compile(r"[+-]?(?:0|[1-9][0-9]*),[0-9]+")
ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
EXACT_DIGITS = 15  # longer integers lose digits as spreadsheet or JSON numbers
# Longer "numbers" stay text: Python refuses integers of over 4,300 digits (and converts
# long ones in quadratic time), and no spreadsheet holds such numbers anyway.
MAX_NUMBER_CHARS = 100

TRACKED_VALUES = 200_000  # distinct values remembered across all columns of a table
TOP_VALUES = 5
LISTED_MALFORMED = 100
SHOWN_CHARS = 100  # of a value or a column name in the report


def classify(text: str, decimal_comma: bool = False) -> tuple[str, Any]:
    """The kind of one CSV value and its parsed form (a number, a date, a bool, or None).

    Called for every cell of a table, hence the cheap tests first.
    """
    value = text.strip()
    if not value:
        return "missing", None
    if value[0] in "0123456789+-." and len(value) <= MAX_NUMBER_CHARS:
        if INTEGER.fullmatch(value):
            return "integer", int(value)
        if FLOAT.fullmatch(value):
            number = float(value)
            if math.isfinite(number):
                return "float", number
        elif decimal_comma and DECIMAL_COMMA.fullmatch(value):
            return "float", float(value.replace(",", "."))
        if ISO_DATE.match(value):
            date = parse_date(value)
            if date is not None:
                return "date", date
    if len(value) <= LONGEST_TOKEN:  # lowering a long text would be wasted work
        lowered = value.lower()
        if lowered in MISSING:
            return "missing", None
        if lowered in BOOLEANS:
            return "boolean", BOOLEANS[lowered]
    return "text", None


def parse_date(text: str) -> datetime.date | None:
    try:
        if len(text) == 10:
            return datetime.date.fromisoformat(text)
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


def classify_value(value: Any) -> tuple[str, Any]:
    """The kind of a typed value, as a spreadsheet cell holds it."""
    if value is None:
        return "missing", None
    if isinstance(value, bool):
        return "boolean", value
    if isinstance(value, int):
        return "integer", value
    if isinstance(value, float):
        return "float", value
    if isinstance(value, datetime.date):
        return "date", value
    return classify(str(value))


def output_number(kind: str, parsed: Any) -> int | float | None:
    """The number to write for a value, if it is one that survives as a number."""
    if kind == "float":
        return parsed
    if kind == "integer" and len(str(abs(parsed))) <= EXACT_DIGITS:
        return parsed
    return None


def date_key(value: datetime.date) -> datetime.datetime:
    """Dates, naive and aware datetimes made comparable: all as naive UTC datetimes."""
    if not isinstance(value, datetime.datetime):
        return datetime.datetime(value.year, value.month, value.day)
    if value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


class TopValues:
    """Counts of the most common values, with at most `capacity` distinct values held.

    When full, it keeps the more frequent half: values that are common stay exact, and
    memory stays fixed however many distinct values a column has.
    """

    def __init__(self, capacity: int):
        self.capacity = max(capacity, 2 * TOP_VALUES)
        self.counts: Counter[str] = Counter()
        self.approximate = False

    def add(self, value: str) -> None:
        self.counts[value.strip()[:SHOWN_CHARS]] += 1
        if len(self.counts) > self.capacity:
            self.counts = Counter(dict(self.counts.most_common(self.capacity // 2)))
            self.approximate = True

    def most_common(self) -> list[tuple[str, int]]:
        return self.counts.most_common(TOP_VALUES)


class ColumnProfile:
    """What one column holds, gathered value by value."""

    def __init__(self, name: str, top_capacity: int):
        self.name = name
        self.kinds: Counter[str] = Counter()
        self.numbers = 0
        self.total: int | float = 0
        self.low: int | float | None = None
        self.high: int | float | None = None
        self.earliest: tuple[datetime.datetime, str] | None = None
        self.latest: tuple[datetime.datetime, str] | None = None
        self.top = TopValues(top_capacity)

    def add(self, kind: str, parsed: Any, text: str) -> None:
        """Count one value: its kind, its parsed form, and the text it was written as."""
        self.kinds[kind] += 1
        if kind == "integer" or kind == "float":
            self.numbers += 1
            self.total += parsed
            if self.low is None or parsed < self.low:
                self.low = parsed
            if self.high is None or parsed > self.high:
                self.high = parsed
        elif kind == "date":
            key = (date_key(parsed), text.strip())
            if self.earliest is None or key < self.earliest:
                self.earliest = key
            if self.latest is None or key > self.latest:
                self.latest = key
        elif kind != "missing":  # common values are shown for text and booleans only
            self.top.add(text)

    @property
    def missing(self) -> int:
        return self.kinds["missing"]

    @property
    def present(self) -> int:
        return self.kinds.total() - self.missing

    @property
    def type(self) -> str:
        kinds = {kind for kind, count in self.kinds.items() if count and kind != "missing"}
        if not kinds:
            return "empty"
        if kinds == {"integer", "float"}:
            return "float"
        return kinds.pop() if len(kinds) == 1 else "text"

    @property
    def mean(self) -> float | None:
        return self.total / self.numbers if self.numbers else None


class TableProfile:
    """Rows, columns and malformed rows of one table."""

    def __init__(self, name: str, size: int, source: str):
        self.name = name
        self.size = size
        self.source = source  # how it was read, e.g. "CSV, encoding cp1252, delimiter ;"
        self.columns: list[ColumnProfile] = []
        self.rows = 0
        self.blank = 0
        self.malformed = 0
        self.malformed_listed: list[tuple[int, int, str]] = []
        self.notes: list[str] = []

    def set_header(self, names: list[str]) -> list[str]:
        """Name the columns (blank and repeated names made unique); returns the names."""
        unique, seen = [], set()
        for index, name in enumerate(names, 1):
            base = name.strip() or f"column {index}"
            candidate, number = base, 1
            while candidate in seen:
                number += 1
                candidate = f"{base} ({number})"
            seen.add(candidate)
            unique.append(candidate)
        capacity = TRACKED_VALUES // max(len(unique), 1)
        self.columns = [ColumnProfile(name, capacity) for name in unique]
        return unique

    def add_malformed(self, first_line: int, last_line: int, reason: str) -> None:
        self.malformed += 1
        if len(self.malformed_listed) < LISTED_MALFORMED:
            self.malformed_listed.append((first_line, last_line, reason))


# -- the report ---------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 75rem;
       padding: 0 1rem; color: #1d1d1f; }
h1 { font-size: 1.5rem; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 1rem 0 2rem; }
th, td { text-align: left; vertical-align: top; padding: .35rem .7rem;
         border-bottom: 1px solid #ddd; }
td.number { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
thead th { background: #f3f3f5; }
ol { margin: 0; padding-left: 1.2rem; }
.note { color: #555; }
.type { font-weight: 600; }
"""


def render_report(profile: TableProfile) -> str:
    """The report as one self-contained HTML page; every value from the file is escaped."""
    e = _escape
    summary = [
        ("Rows", f"{profile.rows:,}"),
        ("Columns", f"{len(profile.columns):,}"),
        ("Malformed rows", f"{profile.malformed:,}"),
        ("Blank lines", f"{profile.blank:,}"),
        ("File size", _size(profile.size)),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Report: {e(profile.name)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(profile.name)}</h1>",
        f'<p class="note">{e(profile.source)}</p>',
        *(f'<p class="note">{e(note)}</p>' for note in profile.notes),
        '<table class="summary">',
        *(
            f'<tr><th>{e(label)}</th><td class="number">{e(value)}</td></tr>'
            for label, value in summary
        ),
        "</table>",
        _columns_table(profile),
        _malformed_section(profile),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _columns_table(profile: TableProfile) -> str:
    if not profile.columns:
        return "<p>The file holds no table.</p>"
    head = ["#", "Column", "Type", "Values", "Missing", "Min", "Max", "Mean", "Top values"]
    rows = []
    for index, column in enumerate(profile.columns, 1):
        low = high = mean = ""
        if column.type in ("integer", "float"):
            low, high, mean = _number(column.low), _number(column.high), _number(column.mean)
        elif column.type == "date":
            low, high = column.earliest[1], column.latest[1]
        share = 100 * column.missing / profile.rows if profile.rows else 0
        missing = f"{column.missing:,} ({share:.1f}%)" if column.missing else "0"
        cells = [
            f'<td class="number">{index}</td>',
            f"<td>{_escape(_shorten(column.name))}</td>",
            f'<td class="type">{column.type}</td>',
            f'<td class="number">{column.present:,}</td>',
            f'<td class="number">{missing}</td>',
            *(f'<td class="number">{_escape(value)}</td>' for value in (low, high, mean)),
            f"<td>{_top_values(column)}</td>",
        ]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    header = "".join(f"<th>{label}</th>" for label in head)
    return (
        f'<h2>Columns</h2>\n<table class="columns"><thead><tr>{header}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody></table>"
    )


def _top_values(column: ColumnProfile) -> str:
    if column.type not in ("text", "boolean"):
        return ""
    items = "".join(
        f'<li>{_escape(_shorten(value))} <span class="note">× {count:,}</span></li>'
        for value, count in column.top.most_common()
    )
    about = '<span class="note">approximate counts</span>' if column.top.approximate else ""
    return f"<ol>{items}</ol>{about}"


def _malformed_section(profile: TableProfile) -> str:
    if not profile.malformed:
        return ""
    rows = "\n".join(
        f'<tr><td class="number">{_lines(first, last)}</td><td>{_escape(reason)}</td></tr>'
        for first, last, reason in profile.malformed_listed
    )
    more = profile.malformed - len(profile.malformed_listed)
    tail = f"<p>… and {more:,} more malformed rows.</p>" if more else ""
    return (
        "<h2>Malformed rows</h2>\n"
        '<p class="note">These rows are left out of the profile and the converted file.</p>\n'
        f'<table class="malformed"><thead><tr><th>Line</th><th>Problem</th></tr></thead>\n'
        f"<tbody>\n{rows}\n</tbody></table>{tail}"
    )


def _lines(first: int, last: int) -> str:
    return f"{first:,}" if first == last else f"{first:,}–{last:,}"


def _escape(value: Any) -> str:
    # Lone surrogates mark undecodable bytes; they cannot be written as UTF-8.
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    return html.escape(text, quote=True)


def _shorten(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1e15 or (value and abs(value) < 1e-4):
        return f"{value:.6g}"
    return f"{value:,.4f}".rstrip("0").rstrip(".")


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return ""
