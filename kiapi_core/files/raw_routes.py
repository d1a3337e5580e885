"""Raw-body uploads: ``PUT /v1/files`` (``curl -T``), or ``POST`` with the file as the body.

No multipart framing is parsed: each chunk goes straight to a :class:`~.store.BlobWriter`. The
file's name comes from ``?filename=``, else a ``Content-Disposition`` header, else ``upload``
plus an extension for the Content-Type (docs/files.md, "Raw-body uploads").
"""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import unquote

from python_multipart.multipart import parse_options_header
from starlette.requests import ClientDisconnect, Request

from ..errors import BadRequest, PayloadTooLarge
from .models import StoredFile
from .names import suggest_extension
from .store import FileStore


def is_raw_upload(request: Request, media: bytes) -> bool:
    """The body is the file itself: ``PUT``, ``application/octet-stream``, or any other
    non-form type sent with a filename (a JSON body without one is most likely a mistake)."""
    if media.startswith(b"multipart/"):
        return False
    named = "filename" in request.query_params or "content-disposition" in request.headers
    return request.method == "PUT" or media == b"application/octet-stream" or (bool(media) and named)


#: Raw bodies whose Content-Type says nothing about the file: its type is guessed from the name
#: (``curl --data-binary`` sends form-urlencoded unless told otherwise).
_UNTYPED = ("application/octet-stream", "application/x-www-form-urlencoded")


async def raw_upload(request: Request, store: FileStore, media: str, max_bytes: int,
                     too_large: Callable[[int], Exception]) -> StoredFile:
    """The body is the file (``curl -T``, OpenAI-style clients): no multipart parsing, each
    chunk goes straight to the BlobWriter. The name comes from ``?filename=``, else from a
    ``Content-Disposition: attachment; filename=...`` header, else ``upload`` plus an extension
    for the Content-Type."""
    content_type = "" if media in _UNTYPED else media
    filename = request.query_params.get("filename") or disposition_filename(request)
    if not filename:
        filename = "upload" + suggest_extension(content_type)
    async with store.writer(max_bytes=max_bytes, what="upload") as writer:
        try:
            async for chunk in request.stream():
                if chunk:
                    await writer.write(chunk)
        except ClientDisconnect:
            raise BadRequest("the client disconnected before the upload finished") from None
        except PayloadTooLarge:
            raise too_large(max_bytes) from None
        return await writer.commit(filename=filename, content_type=content_type, meta={"source": "upload"})
    raise AssertionError("unreachable")  # pragma: no cover


def disposition_filename(request: Request) -> str:
    header = request.headers.get("content-disposition")
    if not header:
        return ""
    extended = _FILENAME_STAR.search(header)
    if extended:  # RFC 6266/8187: filename*=UTF-8''<percent-encoded>, preferred when present
        charset, encoded = extended.groups()
        try:
            return unquote(encoded, encoding=charset or "utf-8", errors="replace")
        except LookupError:  # an unknown charset
            pass
    _kind, options = parse_options_header(header)
    raw = options.get(b"filename", b"")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_FILENAME_STAR = re.compile(r"filename\*\s*=\s*([A-Za-z0-9_-]*)'[^']*'([^;\s]+)", re.IGNORECASE)


__all__ = ["disposition_filename", "is_raw_upload", "raw_upload"]
