"""Parameters inside the outputs: an image alone says how it was made.

PNG outputs get an ``iTXt`` chunk with the keyword ``kiapi`` (UTF-8, uncompressed), placed
right after ``IHDR``; JPEG outputs get a comment (``COM``) segment right after ``SOI``; WebP
outputs get an ``XMP `` chunk (the file becomes the extended ``VP8X`` layout if it was not)
whose ``kiapi:made`` element holds the JSON. Each holds one JSON object: capability, model,
operation and the job's resolved ``params`` (what ``prepare`` returned: defaults filled in,
the seed drawn), so the image can be made again. No job id: the same request with the same
seed still gives identical bytes (the file's record keeps the job id). The pixels are not
re-encoded: the bytes are spliced, which costs microseconds. Pillow reads them back as
``image.text["kiapi"]`` (PNG), ``image.info["comment"]`` (JPEG) and ``image.info["xmp"]``
(WebP). Other formats are stored unchanged.
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
    if content_type == "image/webp" and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_with_xmp(data, text) or data
    return data


XMP_NS = "https://kiapi.dev/ns/1.0/"
_VP8X_XMP = 0x04
_VP8X_ALPHA = 0x10


def xmp_packet(text: bytes) -> bytes:
    """An XMP packet whose ``kiapi:made`` element holds ``text`` (JSON, XML-escaped)."""
    from xml.sax.saxutils import escape

    body = escape(text.decode("utf-8"))
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" xmlns:kiapi="{XMP_NS}"><kiapi:made>{body}</kiapi:made>'
            '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, offset = [], 12
    while offset + 8 <= len(data):
        fourcc, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        out.append((fourcc, data[offset + 8:offset + 8 + size]))
        offset += 8 + size + (size & 1)
    return out


def _chunk(fourcc: bytes, payload: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) & 1 else b"")


def _webp_with_xmp(data: bytes, text: bytes) -> bytes | None:
    """The WebP with an ``XMP `` chunk; ``None`` if its layout is not understood."""
    chunks = [(f, p) for f, p in _chunks(data) if f != b"XMP "]
    if not chunks:
        return None
    first, payload = chunks[0]
    if first == b"VP8X":
        header = bytes([payload[0] | _VP8X_XMP]) + payload[1:]
        chunks[0] = (b"VP8X", header)
    else:
        size = _canvas(first, payload)
        if size is None:
            return None
        (width, height), alpha = size
        flags = _VP8X_XMP | (_VP8X_ALPHA if alpha else 0)
        header = bytes([flags, 0, 0, 0]) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks.insert(0, (b"VP8X", header))
    body = b"WEBP" + b"".join(_chunk(f, p) for f, p in chunks) + _chunk(b"XMP ", xmp_packet(text))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _canvas(fourcc: bytes, payload: bytes) -> tuple[tuple[int, int], bool] | None:
    """Width, height and alpha of a simple-format WebP's bitstream."""
    if fourcc == b"VP8 " and len(payload) >= 10 and payload[3:6] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", payload[6:10])
        return (width & 0x3FFF, height & 0x3FFF), False
    if fourcc == b"VP8L" and len(payload) >= 5 and payload[0] == 0x2F:
        bits = int.from_bytes(payload[1:5], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1), bool((bits >> 28) & 1)
    return None


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
