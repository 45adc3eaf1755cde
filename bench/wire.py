"""Just enough HTTP/1.1 and SSE over asyncio streams for thousands of cheap clients."""

from __future__ import annotations

import asyncio


def get_request(path: str, port: int, cookie: str = "", accept: str = "*/*") -> bytes:
    """A keep-alive GET, as a browser would send it (HTTP/1.1, so streams come chunked)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Accept: {accept}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status code and the (lower-cased) headers of a response."""
    raw = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(status_line.split(" ", 2)[1]), headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """A whole response body, by Content-Length or chunked."""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        return bytes(body)
    return await reader.read()


class ChunkedDecoder:
    """Decodes a chunked body that arrives in arbitrary pieces.

    A read that is one whole chunk, as a stream's message most often arrives, is sliced
    out at once: the general path cost the clients 3.8 µs more per message than reading
    the same messages unchunked, on the core they share with Redis and the writer, where a
    browser decodes chunks natively for next to nothing. With the short path, 0.8-0.9 µs
    more for a 1 KB message (4.1-4.3 against 3.3-3.4 µs, decoder and SSE parser).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the CRLF after a chunk's data is still to come
        self.finished = False

    def feed(self, data: bytes) -> bytes:
        if not (self._buf or self._left or self._crlf):
            whole = _one_chunk(data)
            if whole is not None:
                return whole
        buf = self._buf
        buf += data
        out = bytearray()
        pos = 0
        while not self.finished:
            if self._left:
                take = min(self._left, len(buf) - pos)
                out += buf[pos : pos + take]
                pos += take
                self._left -= take
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if len(buf) - pos < 2:
                    break
                pos += 2
                self._crlf = False
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            size = int(bytes(buf[pos:end]).split(b";")[0], 16)
            pos = end + 2
            if size == 0:
                self.finished = True
            self._left = size
        del buf[:pos]
        return bytes(out)


def _one_chunk(data: bytes) -> bytes | None:
    """The data of the chunk that `data` is, if it is exactly one whole chunk (not the last,
    empty one); None otherwise."""
    end = data.find(b"\r\n")
    if end <= 0 or not data.endswith(b"\r\n"):
        return None
    try:
        size = int(data[:end].split(b";", 1)[0], 16)
    except ValueError:
        return None
    start = end + 2
    if size == 0 or len(data) != start + size + 2:
        return None
    return data[start : start + size]


class SseParser:
    """Splits an event stream into messages; keeps only each message's event name and id.

    Fields are found with `bytes.find`, not a regex over every line: with ten thousand
    streams the load generator parses megabytes a second, and it shares its core with
    Redis and the writer, so its own cost shows in every latency it measures.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, str | None]]:
        """(event, id) of every message completed by `data`; comments and bare retries skipped."""
        buf = self._buf
        buf += data
        messages = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            event, event_id = _field(buf, b"event", start, end), _field(buf, b"id", start, end)
            if event is not None or event_id is not None:
                messages.append((event or "message", event_id))
            start = end + 2
        del buf[:start]
        return messages


def _field(buf: bytearray, name: bytes, start: int, end: int) -> str | None:
    """The value of the message's last `name` line (the message is buf[start:end])."""
    at = buf.rfind(b"\n" + name + b":", start, end)
    if at >= 0:
        at += 1
    elif buf.startswith(name + b":", start, end):
        at = start
    else:
        return None
    at += len(name) + 1
    if buf.startswith(b" ", at, end):
        at += 1
    stop = buf.find(b"\n", at, end)
    return bytes(buf[at : end if stop < 0 else stop]).decode()
