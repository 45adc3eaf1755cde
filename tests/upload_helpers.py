"""Posting upload forms through the test client, as a browser would encode them."""

from __future__ import annotations

import io

from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart


def post_form(client, slug: str, files=(), headers=None, **fields):
    """A real multipart body, encoded in memory (the test client would spool big ones)."""
    data = MultiDict(fields)
    for name, content in files:
        data.add("files", FileStorage(io.BytesIO(content), filename=name))
    boundary, body = encode_multipart(data)
    return client.post(
        f"/jobs/new/{slug}",
        input_stream=io.BytesIO(body),
        content_length=len(body),
        content_type=f"multipart/form-data; boundary={boundary}",
        headers=headers,
    )
