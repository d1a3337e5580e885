"""Parameters inside the outputs: an image alone says how it was made.

PNG outputs get an ``iTXt`` chunk with the keyword ``kiapi`` (UTF-8, uncompressed), placed
right after ``IHDR``; JPEG outputs get a comment (``COM``) segment right after ``SOI``. Both
hold one JSON object: capability, model, operation, job id and the job's resolved ``params``
(what ``prepare`` returned: defaults filled in, the seed drawn), so the image can be made
again. The pixels are not re-encoded: the bytes are spliced, which costs microseconds.
Pillow reads them back as ``image.text["kiapi"]`` (PNG) and ``image.info["comment"]`` (JPEG).
Other formats are stored unchanged.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgspec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
KEYWORD = b"kiapi"
#: A JPEG segment's payload is at most 65533 bytes; bigger metadata is not embedded.
MAX_JPEG_COMMENT = 65533


def embed_metadata(data: bytes, content_type: str, metadata: dict[str, Any]) -> bytes:
    """``data`` with ``metadata`` embedded when the format allows, else ``data`` unchanged."""
    text = msgspec.json.encode(metadata)
    if content_type == "image/png" and data.startswith(PNG_SIGNATURE):
        return _png_with_text(data, text)
    if content_type == "image/jpeg" and data.startswith(b"\xff\xd8") and len(text) <= MAX_JPEG_COMMENT:
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    return data


def _png_with_text(data: bytes, text: bytes) -> bytes:
    # iTXt: keyword NUL, compression flag 0, method 0, empty language NUL, empty translated NUL
    payload = KEYWORD + b"\x00\x00\x00" + b"\x00" + b"\x00" + text
    chunk = struct.pack(">I", len(payload)) + b"iTXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"iTXt" + payload) & 0xFFFFFFFF)
    ihdr_length = struct.unpack(">I", data[8:12])[0]
    after_ihdr = 8 + 12 + ihdr_length  # length + type + data + crc
    if data[12:16] != b"IHDR":
        return data
    return data[:after_ihdr] + chunk + data[after_ihdr:]


__all__ = ["embed_metadata"]
