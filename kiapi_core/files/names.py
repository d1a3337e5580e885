"""Names: file ids, and cleaning what clients say a file is called and what it holds.

Kept apart from the store so routes and resolution can validate ids and pick filenames
without touching the disk.
"""

from __future__ import annotations

import mimetypes
import re
import unicodedata
from pathlib import Path

from ..errors import NotFound

ID_PATTERN = re.compile(r"^file_[0-9a-f]{32}\Z")
ID_FORM = "file_ followed by 32 lowercase hex digits"
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z")
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,16}\Z")


def valid_id(file_id: object) -> bool:
    """True when ``file_id`` is a well-formed file id (says nothing about whether it exists)."""
    return isinstance(file_id, str) and ID_PATTERN.match(file_id) is not None


def check_id(file_id: str) -> str:
    """Return ``file_id`` or raise NotFound saying what an id looks like."""
    if not valid_id(file_id):
        shown = file_id if len(file_id) <= 80 else file_id[:80] + "..."
        raise NotFound(f"no file {shown!r}: file ids are {ID_FORM}", code="file_not_found")
    return file_id


def clean_filename(name: str | None, default: str = "file") -> str:
    """A filename safe to store and echo in headers: no directories, control characters or
    quotes, at most 200 characters (keeping the extension)."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C" and ch not in '"')
    name = name.strip().strip(".") or default
    if len(name) > 200:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 199 - len(ext)] + dot + ext) if dot and len(ext) <= 16 else name[:200]
    return name


def clean_content_type(value: str | None, filename: str = "") -> str:
    """A bare ``type/subtype`` (parameters dropped, lower case); guessed from the filename when
    ``value`` is missing, generic or malformed; ``application/octet-stream`` as a last resort."""
    media = (value or "").split(";", 1)[0].strip().lower()
    if media and media != "application/octet-stream" and _MEDIA_TYPE.match(media):
        return media
    guessed = mimetypes.guess_type(filename)[0] if filename else None
    return guessed or "application/octet-stream"


_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
               "image/bmp": ".bmp", "image/tiff": ".tiff", "application/zip": ".zip",
               "application/json": ".json", "text/plain": ".txt"}


def suggest_extension(content_type: str, hint: str = "") -> str:
    """An extension for a materialised input: the hint's own (``.safetensors`` from a URL
    path) when it has a sane one, else one for the media type, else none."""
    suffix = Path(hint).suffix.lower() if hint else ""
    if _SUFFIX.match(suffix):
        return suffix
    media = content_type.split(";", 1)[0].strip().lower()
    return _EXTENSIONS.get(media) or mimetypes.guess_extension(media) or ""


def blob_name(file_id: str, filename: str) -> str:
    """``<id>.data<.ext>``: never equal to a sidecar name, and keeps the extension readers
    such as ``mx.load`` use to pick a format."""
    suffix = Path(filename).suffix.lower()
    return f"{file_id}.data{suffix if _SUFFIX.match(suffix) else ''}"
