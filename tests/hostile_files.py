"""Hostile inputs measured against Headway, written by the tests themselves (nothing binary
is kept in the repository). Each is small on disk and costly to whoever reads it naively."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import openpyxl

CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
    '<Override PartName="/xl/sharedStrings.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/>'
    "</Types>"
)
ROOT_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" '
    'Target="xl/workbook.xml"/></Relationships>'
)
WORKBOOK = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>'
)
WORKBOOK_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" '
    'Target="worksheets/sheet1.xml"/>'
    '<Relationship Id="rId2" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" '
    'Target="sharedStrings.xml"/></Relationships>'
)
SHEET_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"


def _workbook(path: Path, sheet_rows: str, shared: list[str] | str = "") -> Path:
    """A minimal, valid XLSX whose sheet XML and shared strings are given."""
    strings = shared if isinstance(shared, str) else "".join(shared)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", CONTENT_TYPES)
        z.writestr("_rels/.rels", ROOT_RELS)
        z.writestr("xl/workbook.xml", WORKBOOK)
        z.writestr("xl/_rels/workbook.xml.rels", WORKBOOK_RELS)
        z.writestr(
            "xl/worksheets/sheet1.xml",
            f'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="{SHEET_NS}">'
            f"<sheetData>{sheet_rows}</sheetData></worksheet>",
        )
        z.writestr(
            "xl/sharedStrings.xml",
            f'<?xml version="1.0" encoding="UTF-8"?><sst xmlns="{SHEET_NS}">{strings}</sst>',
        )
    return path


def shared_strings_bomb(path: Path, entries: int = 3_000_000, distinct: bool = False) -> Path:
    """A workbook of one row whose shared strings table holds millions of entries: the
    same one (compressed hundreds to one), or all different (compressed as text is)."""
    strings = (
        "".join(f"<si><t>{n:x}</t></si>" for n in range(entries))
        if distinct
        else "<si><t>x</t></si>" * entries
    )
    return _workbook(path, '<row r="1"><c r="A1" t="s"><v>0</v></c></row>', strings)


def wide_sheet(path: Path, rows: int = 2_000) -> Path:
    """One value per row, in column XFD (16,384): every row expands to 16,384 cells."""
    cells = "".join(f'<row r="{n}"><c r="XFD{n}"><v>{n}</v></c></row>' for n in range(1, rows + 1))
    return _workbook(path, cells)


def many_entries_zip(path: Path, entries: int = 300_000) -> Path:
    """A zip that looks like a workbook but holds hundreds of thousands of empty members
    (written directly: zipfile would take seconds per hundred thousand)."""
    names = [b"xl/workbook.xml", *(f"xl/media/{n:06}.bin".encode() for n in range(entries))]
    workbook = WORKBOOK.encode()
    local, central = bytearray(), bytearray()
    for name in names:
        data = workbook if name == names[0] else b""
        crc = zlib.crc32(data)
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, len(data), len(data), len(name), 0
        )
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,
            20,
            20,
            0,
            0,
            0,
            0,
            crc,
            len(data),
            len(data),
            len(name),
            0,
            0,
            0,
            0,
            0,
            len(local),
        )
        central += name
        local += header + name + data
    count = min(len(names), 0xFFFF)  # the classic record's count field is 16 bits
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


def quadratic_csv(path: Path, repeats: int = 10_000) -> Path:
    """`,"` over and over: csv.Sniffer's regular expressions take quadratic time on it."""
    path.write_text(',"' * repeats)
    return path


def formula_table(path: Path, suffix: str) -> Path:
    """Cells that a spreadsheet program would run as formulas, as CSV or XLSX."""
    rows = [
        ["name", "value", "amount"],
        ["link", '=HYPERLINK("http://example.com","x")', "-5"],
        ["cmd", "+cmd|' /C calc'!A0", "+44"],
        ["sum", "@SUM(1+1)*cmd|' /C calc'!A0", "3"],
        ["tab", "\t=1+1", "-1.5"],
        ["minus", "-2+3+cmd|' /C calc'!A0", "7"],
    ]
    if suffix == "csv":
        import csv

        with path.open("w", newline="") as f:
            csv.writer(f).writerows(rows)
    else:
        book = openpyxl.Workbook()
        for row in rows:
            book.active.append(row)
        for cell in book.active["B"]:  # keep them text: a workbook a person typed them into
            cell.data_type = "s"
        book.save(path)
    return path
