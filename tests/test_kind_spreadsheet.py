"""The spreadsheet kind: CSVs of many encodings and dialects, and XLSX, profiled and converted."""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import openpyxl
import psutil
import pytest
from PIL import Image

from jobs.kinds import spreadsheet

from . import hostile
from .conftest import wait_for
from .kind_helpers import log_messages, result_names, run_files, submit_files

# cp1252, ";" with decimal commas, a quoted line break (lines 2-3), two broken rows
# (lines 5 and 8), a blank line (7), a harmless trailing delimiter (9), a formula-like value.
SHOP_LINES = [
    "id;name;amount;when;member;city",
    '1;"Zoë',
    'Weiß";12,5;2024-01-05;yes;Zürich',
    "2;Renée;;2024-02-29;no;Köln",
    "3;broken;row",
    '4;"José ""JJ"" Müller";-3;2023-12-31;yes;=1+1',
    "",
    "5;Ünal;1250,75;2024-03-01;no;Besançon;extra",
    "6;Agnès;7;2024-01-01;yes;Zürich;",
    "7;Øyvind €;0,25;2024-06-30;NA;Zürich",
]


@pytest.fixture
def tables(tmp_path) -> dict[str, Path]:
    files = {
        "shop.csv": "\r\n".join(SHOP_LINES).encode("cp1252") + b"\r\n",
        "people.csv": (
            "name\tage\tcountry\nÆrø Ålborg\t31\tDK\n李小龙\t32\tCN\nΩmega\t\tGR\n"
        ).encode("utf-16"),
        "cities.csv": "city,population\nGenève,203856\n".encode("utf-8-sig")
        + b"Bad\xffbyte,1\n"
        + "Málaga,578460\n".encode(),
        "latin.csv": "nom|ville\nFrançois Lefèvre|Besançon\nZoë|Orléans\n".encode("latin-1"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


@pytest.fixture
def workbook(tmp_path) -> Path:
    book = openpyxl.Workbook()
    sales = book.active
    sales.title = "Sales"
    sales.append(["product", "qty", "price", "sold_on", "paid", "note"])
    sales.append(["Tea", 3, 4.5, datetime.datetime(2024, 5, 1), True, None])
    sales.append(["Coffee", 10, 12.25, datetime.datetime(2024, 5, 3), False, "large"])
    sales.append(["Cake", None, 2.0, datetime.datetime(2024, 4, 30), True, "<b>fresh</b>"])
    book.create_sheet("Notes").append(["ignored"])
    path = tmp_path / "sales.xlsx"
    book.save(path)
    return path


class Report:
    """The figures of a report, read from its HTML tables."""

    def __init__(self, path: Path):
        self.html = path.read_text(encoding="utf-8")
        tables = _tables(self.html)
        self.summary = {row[0]: row[1] for row in tables["summary"]}
        head, *rows = tables["columns"]
        self.columns = {row[1]: dict(zip(head, row, strict=True)) for row in rows}
        self.malformed = [tuple(row) for row in tables.get("malformed", [])[1:]]

    def count(self, label: str) -> int:
        return int(self.summary[label].replace(",", ""))


def _tables(page: str) -> dict[str, list[list[str]]]:
    class Parser(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables: dict[str, list[list[str]]] = {}
            self.rows: list[list[str]] | None = None
            self.cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.rows = self.tables.setdefault(dict(attrs).get("class", ""), [])
            elif tag == "tr" and self.rows is not None:
                self.rows.append([])
            elif tag in ("td", "th") and self.rows is not None:
                self.cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                self.rows[-1].append(" ".join("".join(self.cell).split()))
                self.cell = None
            elif tag == "table":
                self.rows = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell.append(data)

    parser = Parser()
    parser.feed(page)
    return parser.tables


def _sheet_rows(path: Path) -> list[list]:
    book = openpyxl.load_workbook(path, read_only=True)
    try:
        return [list(row) for row in book.worksheets[0].iter_rows(values_only=True)]
    finally:
        book.close()


# -- check_file -------------------------------------------------------------------------------


def test_check_file_accepts_tables_in_any_common_encoding(tables, workbook):
    for path in [*tables.values(), workbook]:
        assert spreadsheet.check_file(path) is None, path.name


def test_detects_encoding_and_delimiter(tables):
    found = {name: spreadsheet.detect(path) for name, path in tables.items()}
    assert {name: (fmt.encoding, fmt.delimiter) for name, fmt in found.items()} == {
        "shop.csv": ("cp1252", ";"),
        "people.csv": ("utf-16", "\t"),
        "cities.csv": ("utf-8-sig", ","),
        "latin.csv": ("cp1252", "|"),  # Latin-1's letters, read by its Windows superset
    }


def test_csv_sample_detection_sees_past_an_ascii_start(tmp_path):
    body = "".join(f"{n},plain ascii row\n" for n in range(30_000))
    path = tmp_path / "late.csv"
    path.write_bytes(("id,text\n" + body + "30000,Crème brûlée\n").encode("cp1252"))
    assert spreadsheet.detect(path).encoding == "cp1252"


def test_check_file_decides_by_content_not_name(tmp_path):
    png = tmp_path / "data.csv"
    Image.new("RGB", (64, 64), "red").save(png, "PNG")
    not_a_workbook = tmp_path / "book.xlsx"
    with zipfile.ZipFile(not_a_workbook, "w") as archive:
        archive.writestr("word/document.xml", "<w:document/>")
    old_excel = tmp_path / "old.xlsx"
    old_excel.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(600))
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")

    assert spreadsheet.check_file(png) == "is not a table (CSV or XLSX)"
    assert spreadsheet.check_file(not_a_workbook) == "is a zip archive, not an XLSX workbook"
    assert spreadsheet.check_file(old_excel).startswith("is an old Excel (.xls)")
    assert spreadsheet.check_file(empty) == "is empty"


# -- the job ----------------------------------------------------------------------------------


def test_profiles_and_converts_to_xlsx(store, consumer, tables):
    job, output = run_files(store, "spreadsheet", list(tables.values()), output_format="xlsx")

    assert job.status == "succeeded", job.error
    assert result_names(job) == sorted(
        f"{stem}.{ext}"
        for stem in ("shop", "people", "cities", "latin")
        for ext in ("xlsx", "report.html")
    )
    assert job.stage == "Converting" and job.rate_unit == "bytes"
    assert job.total == job.done == sum(path.stat().st_size for path in tables.values())
    assert job.failed == 0
    assert "shop.csv: 5 rows, 6 columns, 2 malformed" in log_messages(store, job.id, "warning")

    shop = Report(output / "shop.report.html")
    assert shop.count("Rows") == 5
    assert shop.count("Malformed rows") == 2
    assert shop.count("Blank lines") == 1
    assert shop.malformed == [("5", "has 3 fields, expected 6"), ("8", "has 7 fields, expected 6")]
    assert "encoding cp1252, delimiter ;" in shop.html
    columns = shop.columns
    assert {name: column["Type"] for name, column in columns.items()} == {
        "id": "integer",
        "name": "text",
        "amount": "float",
        "when": "date",
        "member": "boolean",
        "city": "text",
    }
    assert (columns["id"]["Min"], columns["id"]["Max"], columns["id"]["Mean"]) == ("1", "7", "4")
    assert (columns["amount"]["Min"], columns["amount"]["Max"]) == ("-3", "12.5")
    assert columns["amount"]["Missing"] == "1 (20.0%)"
    assert columns["amount"]["Values"] == "4"
    assert (columns["when"]["Min"], columns["when"]["Max"]) == ("2023-12-31", "2024-06-30")
    assert columns["member"]["Missing"] == "1 (20.0%)"  # "NA"
    assert columns["city"]["Top values"].startswith("Zürich × 3")

    rows = _sheet_rows(output / "shop.xlsx")
    assert rows[0] == ["id", "name", "amount", "when", "member", "city"]
    assert rows[1] == [1, "Zoë\nWeiß", 12.5, "2024-01-05", "yes", "Zürich"]  # XML reads \r\n as \n
    assert rows[2] == [2, "Renée", None, "2024-02-29", "no", "Köln"]
    assert rows[3][5] == "=1+1"
    assert [row[0] for row in rows[1:]] == [1, 2, 4, 6, 7]  # broken rows left out
    assert rows[5] == [7, "Øyvind €", 0.25, "2024-06-30", "NA", "Zürich"]
    text_cell = openpyxl.load_workbook(output / "shop.xlsx").active["F4"]
    assert (text_cell.value, text_cell.data_type) == ("=1+1", "s")  # text, never a formula

    people = Report(output / "people.report.html")
    assert people.count("Rows") == 3
    assert people.columns["age"]["Type"] == "integer"
    assert people.columns["age"]["Missing"] == "1 (33.3%)"
    assert _sheet_rows(output / "people.xlsx")[1:] == [
        ["Ærø Ålborg", 31, "DK"],
        ["李小龙", 32, "CN"],
        ["Ωmega", None, "GR"],
    ]

    cities = Report(output / "cities.report.html")
    assert cities.count("Rows") == 2
    assert cities.malformed == [("3", "has bytes that are not valid utf-8-sig")]
    assert _sheet_rows(output / "cities.xlsx") == [
        ["city", "population"],
        ["Genève", 203856],
        ["Málaga", 578460],
    ]
    assert _sheet_rows(output / "latin.xlsx")[1] == ["François Lefèvre", "Besançon"]


def test_converts_to_utf8_csv_and_json_lines(store, consumer, tables):
    job, output = run_files(store, "spreadsheet", [tables["shop.csv"]], output_format="csv")
    assert job.status == "succeeded", job.error
    with (output / "shop.csv").open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["id", "name", "amount", "when", "member", "city"]
    assert rows[1] == ["1", "Zoë\r\nWeiß", "12,5", "2024-01-05", "yes", "Zürich"]  # as written
    assert [row[0] for row in rows[1:]] == ["1", "2", "4", "6", "7"]

    job, output = run_files(store, "spreadsheet", [tables["shop.csv"]], output_format="jsonl")
    assert job.status == "succeeded", job.error
    records = [json.loads(line) for line in (output / "shop.jsonl").read_text("utf-8").splitlines()]
    assert len(records) == 5
    assert records[0] == {
        "id": 1,
        "name": "Zoë\r\nWeiß",  # the file's line break, inside quotes
        "amount": 12.5,
        "when": "2024-01-05",
        "member": "yes",
        "city": "Zürich",
    }
    assert records[1]["amount"] is None


def test_reads_the_first_sheet_of_a_workbook(store, consumer, workbook):
    job, output = run_files(store, "spreadsheet", [workbook], output_format="csv")
    assert job.status == "succeeded", job.error
    assert result_names(job) == ["sales.csv", "sales.report.html"]
    report = Report(output / "sales.report.html")
    assert report.count("Rows") == 3
    assert {name: column["Type"] for name, column in report.columns.items()} == {
        "product": "text",
        "qty": "integer",
        "price": "float",
        "sold_on": "date",
        "paid": "boolean",
        "note": "text",
    }
    assert (report.columns["price"]["Min"], report.columns["price"]["Max"]) == ("2", "12.25")
    assert report.columns["qty"]["Missing"] == "1 (33.3%)"
    assert report.columns["sold_on"]["Max"] == "2024-05-03"
    assert "Only the first sheet, “Sales”, was read; also in the workbook: “Notes”" in report.html
    assert "&lt;b&gt;fresh&lt;/b&gt;" in report.html and "<b>fresh" not in report.html
    with (output / "sales.csv").open(encoding="utf-8", newline="") as file:
        assert list(csv.reader(file)) == [
            ["product", "qty", "price", "sold_on", "paid", "note"],
            ["Tea", "3", "4.5", "2024-05-01", "true", ""],
            ["Coffee", "10", "12.25", "2024-05-03", "false", "large"],
            ["Cake", "", "2", "2024-04-30", "true", "<b>fresh</b>"],  # XLSX keeps 2.0 as 2
        ]


def test_over_long_lines_and_fields_are_malformed_not_fatal(store, consumer, tmp_path):
    limit = spreadsheet.MAX_FIELD_CHARS
    path = tmp_path / "long.csv"
    with path.open("w", encoding="ascii", newline="") as file:
        file.write("id,text\n1,short\n")
        file.write('2,"' + "x" * (limit + 10) + '"\n')  # line 3: one line over the limit
        third = limit // 3 + 10
        file.write('3,"' + "a" * third + "\n" + "b" * third + "\n" + "c" * third + '"\n')  # 4-6
        file.write("4,fine\n")
    job, output = run_files(store, "spreadsheet", [path], output_format="jsonl")

    assert job.status == "succeeded", job.error
    report = Report(output / "long.report.html")
    assert report.count("Rows") == 2
    assert report.malformed == [
        ("3", "has a line longer than 10 MiB characters"),
        ("4–6", "has a field longer than 10 MiB characters"),
    ]
    records = [json.loads(line) for line in (output / "long.jsonl").read_text().splitlines()]
    assert records == [{"id": 1, "text": "short"}, {"id": 4, "text": "fine"}]


def test_report_lists_at_most_100_malformed_rows_and_escapes_everything(store, consumer, tmp_path):
    lines = ["<script>alert(1)</script>,b"]
    for number in range(150):
        lines += [f"{number},ok", "only-one-field"]
    path = tmp_path / "messy.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    job, output = run_files(store, "spreadsheet", [path])

    assert job.status == "succeeded", job.error
    report = Report(output / "messy.report.html")
    assert report.count("Rows") == 150
    assert report.count("Malformed rows") == 150
    assert len(report.malformed) == 100
    assert report.malformed[:2] == [
        ("3", "has 1 fields, expected 2"),
        ("5", "has 1 fields, expected 2"),
    ]
    assert "… and 50 more malformed rows." in report.html
    assert "<script>" not in report.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in report.html


def test_a_file_that_is_no_table_is_skipped(store, consumer, tables, tmp_path):
    fake = tmp_path / "fake.csv"
    Image.new("RGB", (32, 32)).save(fake, "PNG")
    job, _ = run_files(store, "spreadsheet", [fake, tables["latin.csv"]])
    assert job.status == "succeeded", job.error
    assert job.failed == 1
    assert result_names(job) == ["latin.report.html", "latin.xlsx"]
    assert "fake.csv: skipped, it is not a table (CSV or XLSX)" in log_messages(store, job.id)

    job, _ = run_files(store, "spreadsheet", [fake])
    assert job.status == "failed"
    assert job.error == "“fake.csv” is not a table (CSV or XLSX)."


# -- writers -----------------------------------------------------------------------------------


def test_xlsx_output_moves_to_a_new_sheet_when_one_is_full(tmp_path, monkeypatch):
    monkeypatch.setattr(spreadsheet, "XLSX_MAX_ROWS", 3)  # Excel's is 1,048,576
    writer = spreadsheet.XlsxWriter(tmp_path / "out.xlsx")
    writer.start(["n", "text"], ["n", "text"])
    for n in range(5):
        writer.write([], [n, "bell\x07" if n == 0 else "x" * (40_000 if n == 1 else 1)])
    notes = writer.close()

    assert notes == [
        "The rows fill 3 sheets of the workbook.",
        "1 cell was cut to Excel's limit of 32,767 characters.",
    ]
    book = openpyxl.load_workbook(tmp_path / "out.xlsx", read_only=True)
    sheets = {
        sheet.title: [list(row) for row in sheet.iter_rows(values_only=True)] for sheet in book
    }
    book.close()
    assert list(sheets) == ["Data", "Data 2", "Data 3"]
    assert [row[0] for row in sheets["Data"]] == ["n", 0, 1]  # the header on every sheet
    assert [row[0] for row in sheets["Data 3"]] == ["n", 4]
    assert sheets["Data"][1][1] == "bell"  # a control character Excel refuses, dropped
    assert len(sheets["Data"][2][1]) == 32_767


# -- guards against hostile tables --------------------------------------------------------------


def test_check_file_refuses_workbooks_that_would_be_costly_to_open(tmp_path):
    many = hostile.many_entry_zip(tmp_path / "many.xlsx", entries=30_000)
    same = hostile.shared_strings_bomb(tmp_path / "same.xlsx")
    distinct = hostile.shared_strings_bomb(
        tmp_path / "distinct.xlsx", entries=2_000_001, distinct=True
    )
    assert spreadsheet.check_file(many) == (
        "is a zip of more than 10,000 files, too many for a workbook"
    )
    assert spreadsheet.check_file(same) == (
        "holds xl/sharedStrings.xml compressed 412 to 1, far beyond what a workbook needs: "
        "it looks like a decompression bomb"
    )
    assert spreadsheet.check_file(distinct) == (
        "has more than 2,000,000 shared strings, more than can be read"
    )
    # Just under the limits, the same shapes are workbooks like any other.
    fine = hostile.shared_strings_bomb(tmp_path / "fine.xlsx", 20_000, distinct=True)
    assert spreadsheet.check_file(fine) is None


def test_a_quadratic_csv_is_detected_from_a_bounded_sample(tmp_path):
    [path] = hostile.quadratic_csvs(tmp_path, count=1, repeats=200_000)
    assert len(spreadsheet.decode_sample(path.read_bytes()[:65536], "utf-8")) > 4 * 4096
    assert spreadsheet.check_file(path) is None  # a (strange) table, read in bounded time


@pytest.mark.timeout(180)
def test_bombs_fail_alone_within_their_limits(store, worker_process, tmp_path):
    """Submitted past the web's checks (as a kind's check could miss them), the shared
    strings bomb and the wide sheet each fail with a plain message; the worker stays small,
    and a job submitted at the same time succeeds."""
    worker = psutil.Process(worker_process().pid)
    bomb = hostile.shared_strings_bomb(tmp_path / "bomb.xlsx")
    wide = hostile.wide_sheet(tmp_path / "wide.xlsx")
    plain = tmp_path / "plain.csv"
    plain.write_text("a,b\n1,2\n")
    ids = [submit_files(store, "spreadsheet", [path]) for path in (bomb, wide, plain)]
    largest = 0

    def finished():
        nonlocal largest
        with contextlib.suppress(psutil.NoSuchProcess):
            tree = [worker, *worker.children(recursive=True)]
            largest = max(largest, sum(p.memory_info().rss for p in tree))
        jobs = [store.get(job_id) for job_id in ids]
        return all(job.finished for job in jobs) and jobs

    bomb_job, wide_job, plain_job = wait_for(finished, timeout=150, interval=0.1)
    assert bomb_job.status == "failed"
    assert bomb_job.error == (
        "“bomb.xlsx” holds xl/sharedStrings.xml compressed 412 to 1, far beyond what a "
        "workbook needs: it looks like a decompression bomb."
    )
    assert wide_job.status == "failed"
    assert wide_job.error == (
        "“wide.xlsx” has a value in column 16,384 (XFD) of row 1; at most 1,000 columns are read."
    )
    assert plain_job.status == "succeeded", plain_job.error
    assert largest < 600 * 10**6, f"the worker's processes reached {largest / 1e6:.0f} MB"


def test_a_cell_of_thousands_of_digits_stays_text(store, consumer, tmp_path):
    digits = "7" * 4301
    path = tmp_path / "long.csv"
    path.write_text(f"id,code\n1,{digits}\n2,42\n")
    job, output = run_files(store, "spreadsheet", [path], output_format="csv")
    assert job.status == "succeeded", job.error
    with (output / "long.csv").open(newline="") as f:
        assert list(csv.reader(f))[1] == ["1", digits]
    assert Report(output / "long.report.html").columns["code"]["Type"] == "text"


def test_formulas_come_out_inert_in_csv(store, consumer, tmp_path):
    source = hostile.formula_table(tmp_path / "formulas.csv", "csv")
    job, output = run_files(store, "spreadsheet", [source], output_format="csv")
    assert job.status == "succeeded", job.error
    with (output / "formulas.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert [row[1] for row in rows[1:]] == [
        '\'=HYPERLINK("http://example.com","x")',
        "'+cmd|' /C calc'!A0",
        "'@SUM(1+1)*cmd|' /C calc'!A0",
        "'\t=1+1",
        "'-2+3+cmd|' /C calc'!A0",
    ]
    assert [row[2] for row in rows[1:]] == ["-5", "+44", "3", "-1.5", "7"]  # numbers stay

    _, output = run_files(store, "spreadsheet", [source], output_format="csv", keep_numbers=False)
    with (output / "formulas.csv").open(newline="") as f:
        assert [row[2] for row in list(csv.reader(f))[1:]] == ["'-5", "'+44", "3", "'-1.5", "7"]


@pytest.mark.parametrize("suffix", ["csv", "xlsx"])
def test_formulas_come_out_inert_in_xlsx(store, consumer, tmp_path, suffix):
    source = hostile.formula_table(tmp_path / f"formulas.{suffix}", suffix)
    job, output = run_files(store, "spreadsheet", [source], output_format="xlsx")
    assert job.status == "succeeded", job.error
    book = openpyxl.load_workbook(output / "formulas.xlsx")
    cells = list(book.worksheets[0]["B"])[1:]
    assert [c.value for c in cells] == [
        '=HYPERLINK("http://example.com","x")',
        "+cmd|' /C calc'!A0",
        "@SUM(1+1)*cmd|' /C calc'!A0",
        "\t=1+1",
        "-2+3+cmd|' /C calc'!A0",
    ]
    assert all(c.data_type == "s" and c.quotePrefix for c in cells)  # text, never a formula
    if suffix == "csv":  # typed from text: numbers are numbers
        assert [c.value for c in list(book.worksheets[0]["C"])[1:]] == [-5, 44, 3, -1.5, 7]
