"""Profile and convert tables: CSV in any common encoding and delimiter, or XLSX.

For each input `<stem>.csv` or `<stem>.xlsx` the results are `<stem>.report.html` (rows,
column types, missing values, ranges, common values, malformed rows by line number) and the
data converted to XLSX, CSV (UTF-8, comma) or JSON Lines. Numbers become numbers in XLSX and
JSON Lines; everything else is copied as written. Only the first sheet of a workbook is read.

Files of any size stream through in one pass with bounded memory, and progress is counted
in bytes read. A malformed row (wrong number of fields, bytes the encoding cannot decode,
a line or field beyond the size limits) is listed in the report and left out; it never
stops the job.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import datetime
import functools
import io
import json
import re
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import charset_normalizer
import openpyxl
import wtforms
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ERROR_CODES, ILLEGAL_CHARACTERS_RE
from openpyxl.utils import get_column_letter

from jobs.kinds import JobContext, JobError, JobKind
from jobs.kinds._common import UniqueNames, read_options
from jobs.kinds._profile import (
    DECIMAL_COMMA,
    FLOAT,
    TableProfile,
    classify,
    classify_value,
    output_number,
    render_report,
)
from jobs.reporter import JobCancelled

NOT_A_TABLE = "is not a table (CSV or XLSX)"
DELIMITERS = ",;\t|"
SAMPLE_BYTES = 64 * 1024  # read from the start (and a few places further in) to detect
SNIFF_CHARS = 4096  # of the sample, for the delimiter: csv.Sniffer is quadratic in it
READ_BUFFER = 1024 * 1024
MAX_COLUMNS = 1000

# What a workbook may be before openpyxl opens it: openpyxl reads the zip's whole table of
# contents and the whole shared strings table into memory, even in read-only mode.
XLSX_MAX_TOC_BYTES = 2 * 1024**2  # the zip's central directory (about 20,000 members)
XLSX_MAX_MEMBERS = 10_000
XLSX_MAX_EXPANDED = 4 * 10**9  # all members uncompressed
XLSX_MAX_RATIO = 200  # uncompressed to compressed, for members over a megabyte
XLSX_MAX_SHARED_STRINGS = 2_000_000
SHARED_STRING = re.compile(rb"<(?:\w+:)?si[\s/>]")

MAX_FIELD_CHARS = 10 * 1024 * 1024
MAX_LINE_CHARS = MAX_FIELD_CHARS
MAX_RECORD_CHARS = 4 * MAX_FIELD_CHARS  # one record may span many lines
# The csv module's limit is global to the process; the default (128 KiB) is too small for
# real files, and without a limit one unclosed quote would read a whole file into memory.
csv.field_size_limit(MAX_FIELD_CHARS)

# Undecodable bytes and over-long lines become these lone surrogates, which no decoder ever
# produces: a row that contains one is malformed, and we know why.
UNDECODABLE = "\udcff"
OVERLONG = "\udcfe"
MARK_UNDECODABLE = "headway-mark-undecodable"
codecs.register_error(MARK_UNDECODABLE, lambda exc: (UNDECODABLE, exc.end))

BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE, whose BOM it starts with
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Single-byte Western code pages decode the same bytes into different letters, and no
# detector tells them apart reliably from a sample. When Windows-1252 (what Excel writes on
# Western systems, and a superset of Latin-1's letters) reads the sample about as cleanly
# as the detector's favourite, we take it.
PREFERRED_ENCODING = "cp1252"
CHAOS_MARGIN = 0.05

# OWASP's rule against formula ("CSV") injection: cells that start with these run as
# formulas in a spreadsheet program, unless marked as text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

XLSX_MAX_ROWS = 1_048_576
XLSX_MAX_CHARS = 32_767


class SpreadsheetOptions(wtforms.Form):
    output_format = wtforms.SelectField(
        "Convert to",
        default="xlsx",
        choices=[
            wtforms.SelectChoice("xlsx", "XLSX workbook"),
            wtforms.SelectChoice("csv", "CSV (UTF-8)"),
            wtforms.SelectChoice("jsonl", "JSON Lines"),
        ],
    )
    keep_numbers = wtforms.BooleanField(
        "Leave signed numbers such as -5 as they are",
        default=True,
        description="Text that a spreadsheet program would run as a formula (starting with "
        "=, +, -, @, a tab or a line break) gets a leading ' in CSV output and is stored as "
        "plain text in XLSX. Numbers cannot run; untick this to mark them too.",
    )


# -- what a file is -------------------------------------------------------------------------


class NotATable(Exception):
    """The file cannot be read as a table; the message says why."""


@dataclasses.dataclass(frozen=True)
class CsvFormat:
    encoding: str
    delimiter: str

    def describe(self) -> str:
        shown = {"\t": "tab", " ": "space"}.get(self.delimiter, self.delimiter)
        return f"CSV, encoding {self.encoding}, delimiter {shown}"


def detect(path: Path) -> CsvFormat | None:
    """The CSV format of a file, or None for an XLSX workbook; NotATable for anything else."""
    with path.open("rb") as file:
        head = file.read(SAMPLE_BYTES)
    if not head:
        raise NotATable("is empty")
    if head.startswith(b"PK\x03\x04"):
        check_workbook(path)
        return None
    if head.startswith(b"\xd0\xcf\x11\xe0"):
        raise NotATable(
            "is an old Excel (.xls) file or a password-protected workbook: save it as XLSX or CSV"
        )
    encoding = detect_encoding(path, head)
    text = decode_sample(head, encoding)
    if looks_binary(text):
        raise NotATable(NOT_A_TABLE)
    return CsvFormat(encoding, detect_delimiter(text))


def check_workbook(path: Path) -> None:
    """Raise NotATable unless the zip is an XLSX workbook that is safe to open: a bounded
    table of contents, members that expand within reason, a bounded shared strings table."""
    toc = zip_toc_bytes(path)
    if toc is None:
        raise NotATable("is a damaged zip archive")
    if toc > XLSX_MAX_TOC_BYTES or toc // 46 > XLSX_MAX_MEMBERS:  # 46: the smallest entry
        raise NotATable(
            f"is a zip of more than {XLSX_MAX_MEMBERS:,} files, too many for a workbook"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > XLSX_MAX_MEMBERS:
                raise NotATable(
                    f"is a zip of {len(members):,} files, too many for a workbook "
                    f"(at most {XLSX_MAX_MEMBERS:,})"
                )
            if "xl/workbook.xml" not in {m.filename for m in members}:
                raise NotATable("is a zip archive, not an XLSX workbook")
            if sum(m.file_size for m in members) > XLSX_MAX_EXPANDED:
                raise NotATable(
                    f"would expand to more than {XLSX_MAX_EXPANDED // 10**9} GB when opened"
                )
            for member in members:
                ratio = member.file_size / max(member.compress_size, 1)
                if member.file_size > 10**6 and ratio > XLSX_MAX_RATIO:
                    raise NotATable(
                        f"holds {member.filename} compressed {ratio:,.0f} to 1, far beyond "
                        "what a workbook needs: it looks like a decompression bomb"
                    )
            strings = next((m for m in members if m.filename == "xl/sharedStrings.xml"), None)
            if strings is not None and count_shared_strings(archive, strings) > (
                XLSX_MAX_SHARED_STRINGS
            ):
                raise NotATable(
                    f"has more than {XLSX_MAX_SHARED_STRINGS:,} shared strings, "
                    "more than can be read"
                )
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise NotATable(f"is a damaged zip archive ({exc})") from None


def zip_toc_bytes(path: Path) -> int | None:
    """The size of a zip's central directory, from its end record (None if there is none):
    known before anything parses the directory itself."""
    with path.open("rb") as file:
        size = file.seek(0, io.SEEK_END)
        file.seek(max(0, size - 65_557))  # the end record, and the longest comment
        tail = file.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    toc = struct.unpack_from("<I", tail, at + 12)[0]
    return size if toc == 0xFFFFFFFF else toc  # zip64: judged by the whole file instead


def count_shared_strings(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> int:
    """Count the entries of the shared strings table as it streams out, never holding it."""
    count, carry = 0, b""
    with archive.open(member) as stream:
        while chunk := stream.read(READ_BUFFER):
            data = carry + chunk
            count += len(SHARED_STRING.findall(data))
            carry = data[-8:]
            count -= len(SHARED_STRING.findall(carry))  # counted again with the next chunk
            if count > XLSX_MAX_SHARED_STRINGS:
                break
    return count + len(SHARED_STRING.findall(carry))


def detect_encoding(path: Path, head: bytes) -> str:
    for bom, encoding in BOMS:
        if head.startswith(bom):
            return encoding
    if utf16 := bomless_utf16(head):
        return utf16
    sample = sample_lines(path, head)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    matches = charset_normalizer.from_bytes(sample)
    best = matches.best()
    if best is None:
        raise NotATable(NOT_A_TABLE)
    for match in matches:
        plausible = match.chaos <= best.chaos + CHAOS_MARGIN
        if plausible and PREFERRED_ENCODING in (match.encoding, *match.could_be_from_charset):
            return PREFERRED_ENCODING
    return best.encoding


def bomless_utf16(head: bytes) -> str | None:
    """UTF-16 without a byte order mark: for most text, every other byte is zero."""
    even, odd = head[0::2], head[1::2]
    if odd.count(0) > 0.4 * len(odd) and even.count(0) < 0.05 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.4 * len(even) and odd.count(0) < 0.05 * len(odd):
        return "utf-16-be"
    return None


def sample_lines(path: Path, head: bytes) -> bytes:
    """Whole lines from the start, middle and end of a file, to detect its encoding by.

    A file whose first 64 KiB are plain ASCII can still hold a "é" further down.
    """
    size = path.stat().st_size
    if size <= len(head):
        return head
    pieces = [_whole_lines(head, from_start=True)]
    with path.open("rb") as file:
        for fraction in (0.25, 0.5, 0.75, 1.0):
            file.seek(max(int(size * fraction) - SAMPLE_BYTES, len(head)))
            pieces.append(_whole_lines(file.read(SAMPLE_BYTES), from_start=False))
    return b"".join(pieces)


def _whole_lines(chunk: bytes, from_start: bool) -> bytes:
    """Cut a chunk to whole lines, so no multi-byte character is split."""
    start = 0 if from_start else chunk.find(b"\n") + 1
    end = chunk.rfind(b"\n") + 1
    return chunk[start:end] if end > start else (chunk if from_start else b"")


def decode_sample(head: bytes, encoding: str) -> str:
    text = codecs.getincrementaldecoder(encoding)("replace").decode(head)
    return text[: text.rfind("\n") + 1] if "\n" in text and len(head) == SAMPLE_BYTES else text


def looks_binary(text: str) -> bool:
    """Control characters other than tab and line breaks do not occur in tables."""
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r\f\v")
    return controls > len(text) / 100


def detect_delimiter(text: str) -> str:
    """csv.Sniffer's answer if the rows agree with it, else the most consistent candidate."""
    sample = text[:SNIFF_CHARS]
    scores = {delimiter: consistency(sample, delimiter) for delimiter in DELIMITERS}
    try:
        sniffed = csv.Sniffer().sniff(sample, DELIMITERS).delimiter
    except csv.Error:
        sniffed = None
    if sniffed in scores and scores[sniffed][1] > 1 and scores[sniffed][0] >= 0.9:
        return sniffed
    best = max(DELIMITERS, key=lambda d: (scores[d][1] > 1, *scores[d]))
    return best if scores[best][1] > 1 else ","


def consistency(sample: str, delimiter: str) -> tuple[float, int]:
    """(share of rows with the most common field count, that count) when split this way."""
    try:
        rows = [row for row in csv.reader(io.StringIO(sample), delimiter=delimiter) if row]
    except csv.Error:
        return 0.0, 0
    if not rows:
        return 0.0, 0
    width, count = Counter(len(row) for row in rows).most_common(1)[0]
    return count / len(rows), width


def check_file(path: Path) -> str | None:
    """Accept a CSV (as text in a known encoding) or an XLSX workbook (as its zip says)."""
    try:
        detect(path)
    except NotATable as exc:
        return str(exc)
    return None


# -- reading --------------------------------------------------------------------------------

Progress = Callable[[int], None]  # called with the bytes of the file read so far


class CountingFile(io.RawIOBase):
    """A raw file that counts the bytes read through it: progress by bytes, at no cost."""

    def __init__(self, path: Path):
        super().__init__()
        self.file = path.open("rb", buffering=0)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        length = self.file.readinto(buffer) or 0
        self.count += length
        return length

    def close(self) -> None:
        self.file.close()
        super().close()


class RecordTooLong(Exception):
    pass


class Lines:
    """Physical lines for csv.reader, numbered, with limits that keep memory bounded.

    A line longer than MAX_LINE_CHARS is skipped and replaced by an OVERLONG marker, so the
    record it belongs to comes out malformed; a record growing past MAX_RECORD_CHARS raises
    RecordTooLong (csv.reader starts afresh at the next line).
    """

    def __init__(self, text: io.TextIOBase):
        self.text = text
        self.number = 0
        self._record_chars = 0

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        line = self.text.readline(MAX_LINE_CHARS)
        if not line:
            raise StopIteration
        self.number += 1
        if len(line) == MAX_LINE_CHARS and line[-1] not in "\r\n":
            while (rest := self.text.readline(MAX_LINE_CHARS)) and rest[-1] not in "\r\n":
                pass
            line = OVERLONG + "\n"
        self._record_chars += len(line)
        if self._record_chars > MAX_RECORD_CHARS:
            self._record_chars = 0
            raise RecordTooLong
        return line

    def new_record(self) -> None:
        self._record_chars = 0


def read_csv(path: Path, fmt: CsvFormat, profile: TableProfile, writer, progress: Progress):
    # Excel writes ";" between fields exactly where "," is the decimal mark: "3,5" is 3.5.
    decimal_comma = fmt.delimiter == ";"
    with (
        CountingFile(path) as counted,
        io.TextIOWrapper(
            io.BufferedReader(counted, READ_BUFFER),
            encoding=fmt.encoding,
            errors=MARK_UNDECODABLE,
            newline="",  # csv handles line breaks itself, including those inside quotes
        ) as text,
    ):
        lines = Lines(text)
        reader = csv.reader(lines, delimiter=fmt.delimiter)
        header: list[str] | None = None
        reported = 0
        while True:
            first = lines.number + 1
            lines.new_record()
            try:
                row = next(reader)
            except StopIteration:
                break
            except (csv.Error, RecordTooLong) as exc:
                profile.add_malformed(first, lines.number, _describe_csv_error(exc))
                continue
            finally:
                if counted.count != reported:
                    reported = counted.count
                    progress(reported)
            if not row:
                profile.blank += 1
                continue
            problem = damage(row, fmt.encoding)
            if header is None:
                if len(row) > MAX_COLUMNS:
                    raise NotATable(f"has {len(row):,} columns; at most {MAX_COLUMNS:,} are read")
                header = row
                writer.start(header, profile.set_header([_clean(name) for name in header]))
                if problem:
                    profile.notes.append(f"The header row {problem}.")
                continue
            if not problem and len(row) != len(header):
                row, problem = fit_width(row, len(header))
            if problem:
                profile.add_malformed(first, lines.number, problem)
                continue
            writer.write(row, add_csv_row(profile, row, decimal_comma, writer.typed))


def add_csv_row(profile: TableProfile, row: list[str], decimal_comma: bool, typed: bool):
    """Profile one well-formed row; returns its values as a typed output writes them."""
    values = [] if typed else None
    for column, text in zip(profile.columns, row, strict=True):
        kind, parsed = classify(text, decimal_comma)
        column.add(kind, parsed, text)
        if typed:  # numbers as numbers, empty as nothing, the rest as written
            number = output_number(kind, parsed)
            values.append(number if number is not None else (text or None))
    profile.rows += 1
    return values


def damage(row: list[str], encoding: str) -> str | None:
    """Why a parsed row is malformed because of its bytes, if it is."""
    joined = "\x1f".join(row)
    if OVERLONG in joined:
        return f"has a line longer than {MAX_LINE_CHARS // 1024**2} MiB characters"
    if UNDECODABLE in joined:
        return f"has bytes that are not valid {encoding}"
    return None


def fit_width(row: list[str], width: int) -> tuple[list[str], str | None]:
    """Trailing empty fields beyond the header are harmless; any other mismatch is not."""
    if len(row) > width and not any(field.strip() for field in row[width:]):
        return row[:width], None
    return row, f"has {len(row)} fields, expected {width}"


def _describe_csv_error(exc: Exception) -> str:
    if isinstance(exc, RecordTooLong):
        return f"is a record longer than {MAX_RECORD_CHARS // 1024**2} MiB characters"
    if "field larger than field limit" in str(exc):
        return f"has a field longer than {MAX_FIELD_CHARS // 1024**2} MiB characters"
    return f"could not be parsed ({exc})"


def _clean(name: str) -> str:
    return name.replace(UNDECODABLE, "\ufffd").replace(OVERLONG, "…")


def read_xlsx(path: Path, profile: TableProfile, writer, progress: Progress) -> None:
    """The first sheet, row by row. Progress is the share of rows (the sheet is compressed)."""
    size = path.stat().st_size
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        sheet = workbook.worksheets[0]
        others = workbook.sheetnames[1:]
        if others:
            profile.notes.append(
                f"Only the first sheet, “{sheet.title}”, was read; also in the workbook: "
                + ", ".join(f"“{name}”" for name in others)
            )
        expected_rows = max(sheet.max_row or 1, 1)
        # Each row as wide as its own last cell, not as the sheet's stated width: one cell
        # in column XFD would otherwise make every row 16,384 cells long.
        sheet.reset_dimensions()
        header: list | None = None
        for number, cells in enumerate(sheet.iter_rows(values_only=True), 1):
            if number % 512 == 0:
                progress(int(size * min(number / expected_rows, 1.0)))
            row = list(cells)
            if len(row) > MAX_COLUMNS:
                beyond = row[MAX_COLUMNS:]
                if beyond.count(None) != len(beyond):
                    last = len(row) - next(i for i, v in enumerate(reversed(row)) if v is not None)
                    raise NotATable(too_wide(last, f"row {number:,}"))
                del row[MAX_COLUMNS:]
            while row and row[-1] is None:
                row.pop()
            if not row:
                profile.blank += 1
                continue
            if header is None:
                header = [_as_text(value) for value in row]
                writer.start(header, profile.set_header(header))
                continue
            if len(row) > len(header):
                profile.add_malformed(
                    number, number, f"has {len(row)} cells, expected {len(header)}"
                )
                continue
            row += [None] * (len(header) - len(row))
            for column, value in zip(profile.columns, row, strict=True):
                kind, parsed = classify_value(value)
                column.add(kind, parsed, _as_text(value))
            profile.rows += 1
            writer.write([_as_text(value) for value in row], row)
    finally:
        workbook.close()
    progress(size)


def too_wide(column: int, where: str) -> str:
    return (
        f"has a value in column {column:,} ({get_column_letter(column)}) of {where}; "
        f"at most {MAX_COLUMNS:,} columns are read"
    )


def _as_text(value: Any) -> str:
    """A cell value as CSV would hold it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime.datetime) and value.time() == datetime.time():
        return value.date().isoformat()  # Excel keeps dates as midnight datetimes
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return str(value)


# -- writing --------------------------------------------------------------------------------


def runs_as_formula(text: str, keep_numbers: bool = True) -> bool:
    """Whether a spreadsheet program would run this text as a formula (a number, however
    signed, cannot run, and is left alone unless `keep_numbers` is off)."""
    if not text.startswith(FORMULA_STARTS):
        return False
    return not (keep_numbers and (FLOAT.fullmatch(text) or DECIMAL_COMMA.fullmatch(text)))


class CsvWriter:
    """UTF-8, comma-separated, the fields as read; a field that would run as a formula in a
    spreadsheet program gets a leading ' (OWASP), which such programs read as "text"."""

    typed = False  # writes the texts, so needs no typed values

    def __init__(self, path: Path, keep_numbers: bool = True):
        self.file = path.open("w", encoding="utf-8", newline="")
        self.csv = csv.writer(self.file)
        self.keep_numbers = keep_numbers

    def _inert(self, texts: list[str]) -> list[str]:
        keep = self.keep_numbers
        return [f"'{text}" if runs_as_formula(text, keep) else text for text in texts]

    def start(self, header: list[str], names: list[str]) -> None:
        self.csv.writerow(self._inert(header))

    def write(self, texts: list[str], values: list) -> None:
        self.csv.writerow(self._inert(texts))

    def close(self) -> list[str]:
        self.file.close()
        return []

    def abandon(self) -> None:
        self.file.close()


class JsonlWriter:
    """One JSON object per row, keyed by the (unique) column names."""

    typed = True

    def __init__(self, path: Path, keep_numbers: bool = True):  # JSON runs nothing
        self.file = path.open("w", encoding="utf-8")
        self.names: list[str] = []

    def start(self, header: list[str], names: list[str]) -> None:
        self.names = names

    def write(self, texts: list[str], values: list) -> None:
        record = dict(zip(self.names, map(_json_value, values), strict=True))
        self.file.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")

    def close(self) -> list[str]:
        self.file.close()
        return []

    def abandon(self) -> None:
        self.file.close()


def _json_value(value: Any) -> Any:
    return _as_text(value) if isinstance(value, (datetime.date, datetime.time)) else value


class XlsxWriter:
    """A streaming (write-only) workbook; rows beyond one sheet's limit go to the next sheet."""

    typed = True

    def __init__(self, path: Path, keep_numbers: bool = True):  # numbers are typed here
        self.path = path
        self.workbook = openpyxl.Workbook(write_only=True)
        self.header: list[str] = []
        self.sheet = None
        self.sheet_rows = 0
        self.cut_cells = 0

    def start(self, header: list[str], names: list[str]) -> None:
        self.header = header
        self._new_sheet()

    def _new_sheet(self) -> None:
        number = len(self.workbook.worksheets) + 1
        self.sheet = self.workbook.create_sheet("Data" if number == 1 else f"Data {number}")
        self.sheet.append([self._cell(name) for name in self.header])
        self.sheet_rows = 1

    def write(self, texts: list[str], values: list) -> None:
        if self.sheet_rows == XLSX_MAX_ROWS:
            self._new_sheet()
        self.sheet.append([self._cell(value) for value in values])
        self.sheet_rows += 1

    def _cell(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if ILLEGAL_CHARACTERS_RE.search(value):
            value = ILLEGAL_CHARACTERS_RE.sub("", value)
        if len(value) > XLSX_MAX_CHARS:
            self.cut_cells += 1
            value = value[:XLSX_MAX_CHARS]
        if runs_as_formula(value) or value in ERROR_CODES:
            # Text from a file must never become a live formula (or an error) in Excel: a
            # text cell, with the "quote prefix" that keeps it text when someone edits it.
            cell = WriteOnlyCell(self.sheet, value)
            cell.data_type = "s"
            cell.quotePrefix = True
            return cell
        return value

    def abandon(self) -> None:
        """Drop the workbook unsaved; openpyxl would keep its temporary files until exit."""
        for sheet in self.workbook.worksheets:
            writer = getattr(sheet, "_writer", None)  # private, hence the care
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
                    writer.cleanup()

    def close(self) -> list[str]:
        if self.sheet is None:
            self.workbook.create_sheet("Data")  # a workbook needs a sheet, even if empty
        self.workbook.save(self.path)
        notes = []
        if len(self.workbook.worksheets) > 1:
            notes.append(f"The rows fill {len(self.workbook.worksheets)} sheets of the workbook.")
        if self.cut_cells:
            cells = "1 cell was" if self.cut_cells == 1 else f"{self.cut_cells:,} cells were"
            notes.append(f"{cells} cut to Excel's limit of {XLSX_MAX_CHARS:,} characters.")
        return notes


WRITERS = {"xlsx": XlsxWriter, "csv": CsvWriter, "jsonl": JsonlWriter}


# -- the job --------------------------------------------------------------------------------


def profile_tables(ctx: JobContext) -> None:
    options = read_options(SpreadsheetOptions, ctx.params)
    extension = options["output_format"]
    reporter = ctx.reporter
    stems = UniqueNames()

    # Both stages count bytes (the kind's rate unit): here, those of the files checked.
    reporter.stage("Detecting formats", total=sum(path.stat().st_size for path in ctx.inputs))
    tables: list[tuple[int, Path, CsvFormat | None]] = []
    refusals: list[tuple[str, str]] = []  # (file name, why it could not be read)
    for index, path in enumerate(ctx.inputs):
        reporter.check()
        try:
            tables.append((index, path, detect(path)))
            reporter.item(index, path.name, 0, "pending")
            reporter.advance(path.stat().st_size, current=path.name)
        except NotATable as exc:
            refusals.append((path.name, str(exc)))
            reporter.log(f"{path.name}: skipped, it {exc}", "warning")
            reporter.item(index, path.name, 100, "failed", reason=f"it {exc}")
            reporter.advance(path.stat().st_size, failed=1, current=path.name)

    reporter.stage("Converting", total=sum(path.stat().st_size for _, path, _ in tables))
    for index, path, fmt in tables:
        stem = stems.take(PurePath(path.name).stem)
        outputs = [ctx.output(f"{stem}.{extension}"), ctx.output(f"{stem}.report.html")]
        progress = file_progress(ctx, index, path)
        try:
            writer = functools.partial(WRITERS[extension], keep_numbers=options["keep_numbers"])
            profile = convert_one(path, fmt, outputs, writer, progress)
        except JobCancelled:
            raise
        except Exception as exc:  # one unreadable workbook must not stop the other files
            refusals.append((path.name, why_unreadable(exc)))
            for output in outputs:
                output.unlink(missing_ok=True)
            reporter.log(f"{path.name}: {refusals[-1][1]}", "warning")
            reporter.item(index, path.name, 100, "failed", reason=refusals[-1][1])
            progress(path.stat().st_size)  # its bytes are dealt with, if not converted
            reporter.advance(0, failed=1)
            continue
        reporter.item(index, path.name, 100, "done")
        reporter.log(
            f"{path.name}: {profile.rows:,} rows, {len(profile.columns)} columns, "
            f"{profile.malformed:,} malformed",
            "warning" if profile.malformed else "info",
        )
    if len(refusals) == 1 == len(ctx.inputs):
        name, reason = refusals[0]
        raise JobError(f"“{name}” {reason}.")
    if len(refusals) == len(ctx.inputs):
        raise JobError(f"None of the {len(ctx.inputs)} files could be read as a table.")


def why_unreadable(exc: Exception) -> str:
    if isinstance(exc, NotATable):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "needs more memory than a job may use"
    return f"could not be read ({type(exc).__name__}: {exc})"


def file_progress(ctx: JobContext, index: int, path: Path) -> Progress:
    """Turn "bytes of this file read so far" into the job's counts, bar and cancel check."""
    size = max(path.stat().st_size, 1)
    done = 0

    def progress(read: int) -> None:
        nonlocal done
        read = min(read, size)
        ctx.reporter.advance(read - done, current=path.name)
        ctx.reporter.item(index, path.name, 100.0 * read / size)
        ctx.reporter.check()
        done = read

    return progress


def convert_one(
    path: Path, fmt: CsvFormat | None, outputs: list[Path], writer_class, progress: Progress
) -> TableProfile:
    """Profile one table while writing it converted; then write its report."""
    data_path, report_path = outputs
    source = fmt.describe() if fmt else "XLSX workbook"
    profile = TableProfile(path.name, path.stat().st_size, source)
    writer = writer_class(data_path)
    try:
        if fmt is None:
            read_xlsx(path, profile, writer, progress)
        else:
            read_csv(path, fmt, profile, writer, progress)
    except BaseException:  # cancelled or failed: release the writer's files, temporary ones too
        writer.abandon()
        raise
    profile.notes += writer.close()
    report_path.write_text(render_report(profile), encoding="utf-8")
    return profile


KIND = JobKind(
    slug="spreadsheet",
    title="Profile and convert tables",
    description="Reports what each column of a CSV or XLSX file holds, lists malformed rows, "
    "and converts the data to XLSX, CSV or JSON Lines.",
    work=profile_tables,
    options=SpreadsheetOptions,
    check_file=check_file,
    accept=".csv,.tsv,.txt,.xlsx,text/csv,"
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    accept_label="CSV or XLSX files",
    max_files=20,
    max_total_bytes=2 * 1024**3,
    stages=(("Detecting formats", 1), ("Converting", 19)),
    rate_unit="bytes",
    retry_items=True,
)
