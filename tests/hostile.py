"""Hostile inputs, and a raw HTTP client for the tests that aim them at a live server. The
tests write every file themselves: nothing binary is kept in the repository."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
import zipfile
import zlib
from pathlib import Path

import openpyxl
import requests


def quadratic_csvs(folder: Path, count: int = 20, repeats: int = 10_000) -> list[Path]:
    """CSV files of `,"` ×10,000 (20 KB each): csv.Sniffer is quadratic in such a sample."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"q{i}.csv" for i in range(count)]
    for path in paths:
        path.write_bytes(b',"' * repeats)
    return paths


def many_entry_zip(path: Path, entries: int = 300_000) -> Path:
    """A zip of `entries` empty members (about 26 MB for 300,000), named as a workbook.

    Written by hand: zipfile takes ten times longer to write this many members.
    """
    if path.exists():
        return path
    crc = zlib.crc32(b"")
    local, central = bytearray(), bytearray()
    for i in range(entries):
        name = f"x/{i:06d}".encode()
        offset = len(local)
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, crc, 0, 0, len(name), 0)
        local += name
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
            0,
            0,
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        central += name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, len(central), len(local), 0)
    # More than 65,535 members need the zip64 end records; readers accept 0xFFFF counts
    # with them.
    zip64_end = struct.pack(
        "<IQHHIIQQQQ",
        0x06064B50,
        44,
        45,
        45,
        0,
        0,
        entries,
        entries,
        len(central),
        len(local),
    )
    locator = struct.pack("<IIQI", 0x07064B50, 0, len(local) + len(central), 1)
    path.write_bytes(bytes(local) + bytes(central) + zip64_end + locator + end)
    return path


class Visitor:
    """A browser's session on a live server: its cookie and the form's CSRF token."""

    def __init__(self, base: str, slug: str = "steps"):
        self.base = base
        self.session = requests.Session()
        page = self.session.get(f"{base}/jobs/new/{slug}", timeout=30)
        page.raise_for_status()
        self.token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)[1]

    @property
    def cookie(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.session.cookies)


def part(boundary: str, name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (
        f'; filename="{filename}"' if filename is not None else ""
    )
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
    if filename is not None:
        head += "Content-Type: application/octet-stream\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


class RawPost:
    """A POST sent piece by piece over a plain socket (chunked if no length is given).

    The body goes out from a thread, so the answer is read even when the server answers
    (and closes) before the body is all sent, as it must for a refused upload.
    """

    def __init__(
        self,
        port: int,
        path: str,
        pieces,
        *,
        headers: dict[str, str],
        length: int | None = None,
        pause: float = 0.0,
        close: bool = True,
    ):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.sent = 0
        self.send_error: Exception | None = None
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1"]
        lines += ["Connection: close"] if close else []
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        )
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.chunked = length is None
        self._sender = threading.Thread(target=self._send, args=(pieces, pause), daemon=True)
        self._sender.start()

    def _send(self, pieces, pause: float) -> None:
        try:
            for piece in pieces:
                data = b"%x\r\n%s\r\n" % (len(piece), piece) if self.chunked else piece
                self.sock.sendall(data)
                self.sent += len(piece)
                if pause:
                    time.sleep(pause)
            if self.chunked:
                self.sock.sendall(b"0\r\n\r\n")
        except OSError as exc:  # the server answered and closed: expected for refusals
            self.send_error = exc

    def response(self, timeout: float = 60.0) -> tuple[int, dict[str, str], str]:
        """Status, headers and body of the answer (read until the server closes)."""
        self.sock.settimeout(timeout)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # a reset after the answer arrived: the answer is what counts
        finally:
            self.sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0] else 0
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            body = _unchunk(body)
        return status, headers, body.decode("utf-8", "replace")


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


# -- workbooks that are costly to open ----------------------------------------------------------

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
