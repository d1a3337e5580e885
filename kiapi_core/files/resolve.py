"""Turning the FileRefs in a decoded request into stored files before the job is queued.

This runs on the event loop with async I/O (design §3 step 4): a slow URL or a bad image
costs only its own request a 4xx, never the model thread a stall. Every FileRef in the
request is found, declared in ``Operation.inputs`` or not (undeclared ones are treated as
kind ``"file"``), so nothing reaches a handler unresolved. On any failure, the files this
call materialised are deleted again: hostile input leaves nothing stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

import msgspec

from ..errors import BadRequest, InvalidInput, InvalidRequest, KiapiError, NotFound, PayloadTooLarge
from ..images import probe_image
from .blobstore import BlobStore
from .fetch import URLFetcher
from .models import StoredFile
from .names import ID_FORM, clean_content_type, suggest_extension, valid_id
from .refs import FILE_REF_TYPES, FileDataURLRef, FileIDRef, FileURLRef

MiB = 1024 * 1024
#: More FileRefs than this in one request is refused (no operation needs nearly as many).
MAX_REFS = 64
_MAX_DEPTH = 32
_INDEX = re.compile(r"\[\d+\]")


class ResolvedInputs(msgspec.Struct, kw_only=True):
    """What resolution produced, keyed by field path (``image``, ``loras[0].file``)."""

    #: The stored file behind every FileRef: handed to the handler as ``JobContext.inputs``.
    files: dict[str, StoredFile] = msgspec.field(default_factory=dict)
    #: Field path → file id, for the job record.
    summary: dict[str, str] = msgspec.field(default_factory=dict)
    #: Ids of files this resolution stored (URL and data URL inputs), oldest first.
    created: list[str] = msgspec.field(default_factory=list)
    #: Field path → pixel count of each image input (what decoding it will take in memory).
    pixels: dict[str, int] = msgspec.field(default_factory=dict)


def find_file_refs(value: Any, path: str = "", depth: int = 0) -> Iterator[tuple[str, Any]]:
    """Yield ``(path, ref)`` for every FileRef inside a decoded request, using wire names."""
    if depth > _MAX_DEPTH:
        return
    if isinstance(value, FILE_REF_TYPES):
        yield path, value
    elif isinstance(value, msgspec.Struct):
        for attr, wire in zip(value.__struct_fields__, value.__struct_encode_fields__):
            yield from find_file_refs(getattr(value, attr), f"{path}.{wire}" if path else wire, depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from find_file_refs(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from find_file_refs(item, f"{path}.{key}" if path else str(key), depth + 1)


def declared_pattern(path: str) -> str:
    """``loras[2].file`` → ``loras[].file``, the form ``Operation.inputs`` declares."""
    return _INDEX.sub("[]", path)


async def resolve_inputs(request: Any, inputs: Mapping[str, str], *, store: BlobStore, settings: Any,
                         fetcher: URLFetcher | None = None) -> ResolvedInputs:
    """Resolve every FileRef in ``request`` (a decoded Struct) to a stored file.

    ``inputs`` maps declared paths to kinds (``"image"`` inputs are checked with Pillow).
    Raises 400 (unknown or malformed file id, refused or failed URL, invalid data URL, not
    an image), 413 (data URL over ``KIAPI_MAX_DATA_URL_MB``) or 422 (too many refs), always
    naming the field.
    """
    fetcher = fetcher or URLFetcher.from_settings(settings)
    found = list(find_file_refs(request))
    if len(found) > MAX_REFS:
        raise InvalidRequest(f"the request holds {len(found)} file references; at most {MAX_REFS} "
                             "are accepted")
    result = ResolvedInputs()
    try:
        for path, ref in found:
            kind = inputs.get(declared_pattern(path), "file")
            stored = await _resolve_one(path, ref, kind, store=store, settings=settings, fetcher=fetcher,
                                        result=result)
            result.files[path] = stored
            result.summary[path] = stored.file_id
    except BaseException:
        for file_id in result.created:
            try:
                await store.adelete(file_id)
            except (NotFound, OSError):
                pass
        raise
    return result


async def _resolve_one(path: str, ref: Any, kind: str, *, store: BlobStore, settings: Any,
                       fetcher: URLFetcher, result: ResolvedInputs) -> StoredFile:
    stem = f"input-{_slug(path)}"
    if isinstance(ref, FileIDRef):
        stored = await _by_id(path, ref.file_id, store)
    elif isinstance(ref, FileURLRef):
        stored = await fetcher.fetch(ref.url, store=store, stem=stem, what=f"`{path}`",
                                     meta={"field": path, "kind": kind})
        result.created.append(stored.file_id)
    elif isinstance(ref, FileDataURLRef):
        max_bytes = int(settings.max_data_url_mb * MiB)
        media, data = await asyncio.to_thread(decode_data_url, ref.data_url, max_bytes=max_bytes,
                                              what=f"`{path}`")
        content_type = clean_content_type(media)
        stored = await asyncio.to_thread(
            store.put_bytes, data, filename=stem + suggest_extension(content_type),
            content_type=content_type, meta={"source": "data_url", "field": path, "kind": kind})
        del data
        result.created.append(stored.file_id)
    else:  # pragma: no cover - FILE_REF_TYPES has exactly three members
        raise TypeError(f"unexpected FileRef {type(ref).__name__}")
    if kind == "image":
        try:
            width, height, _ = await asyncio.to_thread(probe_image, stored.path,
                                                       max_pixels=settings.max_image_pixels, what=f"`{path}`")
            result.pixels[path] = width * height
        except InvalidInput as exc:
            exc.extra.setdefault("field", path)
            raise
    return stored


async def _by_id(path: str, file_id: str, store: BlobStore) -> StoredFile:
    if not valid_id(file_id):
        shown = file_id if len(file_id) <= 80 else file_id[:80] + "..."
        raise BadRequest(f"`{path}`: {shown!r} is not a file id; file ids are {ID_FORM}",
                         code="invalid_file_id", field=path)
    try:
        return await store.aget(file_id)
    except NotFound:
        raise BadRequest(f"`{path}`: no file {file_id!r}; upload it with POST /v1/files first "
                         "(it may also have expired or been deleted)",
                         code="unknown_file_id", field=path, file_id=file_id) from None


def decode_data_url(text: str, *, max_bytes: int, what: str = "data URL") -> tuple[str, bytes]:
    """``data:[<media type>][;base64],<payload>`` → ``(media type, bytes)``.

    Base64 is decoded strictly (no whitespace, correct padding); the size is checked before
    decoding, from the payload's length, so an oversize data URL costs no extra memory.
    """
    if not text[:5].lower() == "data:":
        raise BadRequest(f"{what} must start with 'data:' (data:image/png;base64,...)",
                         code="invalid_data_url", field=_field(what))
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise BadRequest(f"{what} has no ',' between its header and its data",
                         code="invalid_data_url", field=_field(what))
    params = [p.strip() for p in header.split(";")]
    media = params[0] or "text/plain"
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    limit = max_bytes * 4 // 3 + 4 if is_base64 else None
    if (limit is not None and len(payload) > limit):
        raise _data_too_large(what, max_bytes)
    try:
        data = base64.b64decode(payload, validate=True) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{what} is not valid base64 ({exc}); encode the file with standard "
                         "base64, without line breaks", code="invalid_data_url",
                         field=_field(what)) from None
    if len(data) > max_bytes:
        raise _data_too_large(what, max_bytes)
    if not data:
        raise BadRequest(f"{what} holds no data", code="invalid_data_url", field=_field(what))
    return media, data


def _data_too_large(what: str, max_bytes: int) -> KiapiError:
    return PayloadTooLarge(f"{what} is larger than {max_bytes / MiB:g} MiB (KIAPI_MAX_DATA_URL_MB); "
                           "upload big files with POST /v1/files and pass their file_id",
                           code="data_url_too_large", field=_field(what), limit_bytes=max_bytes)


def _field(what: str) -> str:
    return what.strip("`")


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-") or "file"
