"""The Files API: ``/v1/files`` upload, list, metadata, download (Range, ETag) and delete.

Uploads are parsed with python-multipart's push parser straight off ``request.stream()`` and
written to disk chunk by chunk: ``request.form()`` would spool the whole file first (memory
or a temp file) and copy it again, which is what made the earlier kiapi's memory grow with
every upload. A successful upload answers **201 Created** with a ``Location`` header and the
FileRecord (the earlier kiapi answered 200; clients that check for 2xx see no difference).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import unicodedata
from collections.abc import Callable
from email.utils import formatdate
from typing import IO, Any
from urllib.parse import quote

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..errors import (
    BadRequest,
    InsufficientStorage,
    InvalidRequest,
    KiapiError,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
)
from ..http.body import drain
from ..http.responses import JSONResponse
from .models import StoredFile
from .names import ID_FORM, check_id, clean_content_type, valid_id
from .raw_routes import is_raw_upload, raw_upload
from .store import BlobWriter, FileStore

MiB = 1024 * 1024
#: Room for the multipart framing and small extra fields on top of the file size cap.
MULTIPART_OVERHEAD = 1 * MiB
_READ_CHUNK = 1 * MiB


class RangeNotSatisfiable(KiapiError):
    status = 416
    code = "range_not_satisfiable"


def routes() -> list[Route]:
    """The Files API routes, to be mounted at the application root."""
    return [
        Route("/v1/files", upload_file, methods=["POST"], name="files:upload"),
        Route("/v1/files", upload_file, methods=["PUT"], name="files:put"),
        Route("/v1/files", list_files, methods=["GET"], name="files:list"),
        Route("/v1/files/{file_id}", get_file, methods=["GET"], name="files:get"),
        Route("/v1/files/{file_id}", delete_file, methods=["DELETE"], name="files:delete"),
        Route("/v1/files/{file_id}/download", download_file, methods=["GET", "HEAD"],
              name="files:download"),
    ]


def _store(request: Request) -> FileStore:
    return request.app.state.host.files


# -- upload ------------------------------------------------------------------------------


async def upload_file(request: Request) -> Response:
    """``POST /v1/files``: multipart field ``file``, or the raw bytes as the body (also
    ``PUT``, see :func:`_raw_upload`) → 201 FileRecord."""
    host = request.app.state.host
    if not getattr(getattr(host, "jobs", None), "accepting", True):
        raise Unavailable("the server is shutting down and takes no new uploads",
                          code="shutting_down", headers={"Retry-After": "30", "Connection": "close"})
    settings = host.settings
    max_bytes = int(settings.max_upload_mb * MiB)
    media, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    raw = is_raw_upload(request, media)
    if not raw and (media != b"multipart/form-data" or not boundary):
        raise UnsupportedMediaType(
            "send the file as multipart/form-data in a field named `file` "
            "(curl -F file=@picture.png http://host/v1/files), or as the raw body with its "
            "Content-Type and a name (curl -T picture.png 'http://host/v1/files?filename=picture.png')")
    declared = request.headers.get("content-length")
    store = _store(request)
    if declared is not None:
        if not digits(declared, 19):
            raise BadRequest("Content-Length is not a number")
        overhead = 0 if raw else MULTIPART_OVERHEAD
        if int(declared) > max_bytes + overhead:
            await drain(request)
            raise _too_large(max_bytes)
        if store.quota is not None and int(declared) - overhead > store.quota.available_bytes():
            await drain(request)
            raise store.quota.full("this upload", int(declared))
    try:
        if raw or not boundary:
            stored = await raw_upload(request, store, media.decode("latin-1"), max_bytes, _too_large)
        else:
            stored = await _MultipartUpload(store, boundary, max_bytes).run(request)
    except (PayloadTooLarge, InsufficientStorage) as exc:
        await drain(request)  # clients that send everything before reading still see the answer
        exc.headers.setdefault("Connection", "close")
        raise
    location = f"{request.scope.get('root_path', '')}/v1/files/{stored.file_id}"
    return JSONResponse(stored.record, status_code=201, headers={"Location": location})



def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"upload is larger than the limit of {max_bytes / MiB:g} MiB; raise KIAPI_MAX_UPLOAD_MB "
        "to accept larger files", limit_bytes=max_bytes)


class _MultipartUpload:
    """Drives the push parser and writes the ``file`` part to a BlobWriter as it arrives.

    The parser's callbacks are synchronous, the writes are not; callbacks therefore only
    queue events, which are handled after each ``parser.write`` (one network chunk at most).
    """

    def __init__(self, store: FileStore, boundary: bytes, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.events: list[tuple[str, bytes | memoryview]] = []
        ev = self.events
        callbacks: Any = {
            "on_part_begin": lambda: ev.append(("begin", b"")),
            "on_header_field": lambda d, s, e: ev.append(("field", bytes(d[s:e]))),
            "on_header_value": lambda d, s, e: ev.append(("value", bytes(d[s:e]))),
            "on_header_end": lambda: ev.append(("header_end", b"")),
            "on_headers_finished": lambda: ev.append(("headers", b"")),
            "on_part_data": lambda d, s, e: ev.append(("data", _part_data(d, s, e))),
            "on_part_end": lambda: ev.append(("part_end", b"")),
            "on_end": lambda: ev.append(("end", b"")),
        }
        try:
            self.parser = MultipartParser(boundary, callbacks, max_header_count=16,
                                          max_header_size=8192)
        except Exception as exc:  # an absurd boundary
            raise BadRequest(f"invalid multipart boundary: {exc}") from None
        self.headers: dict[str, bytes] = {}
        self._field = b""
        self._value = b""
        self.writer: BlobWriter | None = None
        self.filename = ""
        self.content_type = ""
        self.in_file = False
        self.file_done = False
        self.ended = False
        self.stored: StoredFile | None = None

    async def run(self, request: Request) -> StoredFile:
        async with contextlib.AsyncExitStack() as stack:
            self._stack = stack
            received = 0
            try:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > self.max_bytes + MULTIPART_OVERHEAD:
                        raise _too_large(self.max_bytes)
                    if not chunk:
                        continue
                    try:
                        self.parser.write(chunk)
                    except MultipartParseError as exc:
                        raise BadRequest(f"malformed multipart body: {exc}") from None
                    await self._handle_events()
            except ClientDisconnect:
                raise BadRequest("the client disconnected before the upload finished") from None
            except PayloadTooLarge:
                raise _too_large(self.max_bytes) from None
            if not self.ended:
                raise BadRequest("the multipart body ended before its closing boundary; "
                                 "was the upload cut off?")
            if self.writer is None or not self.file_done:
                raise InvalidRequest("no multipart field named `file` was sent", field="file")
            return await self.writer.commit(filename=self.filename, content_type=self.content_type,
                                            meta={"source": "upload"})
        raise AssertionError("unreachable")  # pragma: no cover

    async def _handle_events(self) -> None:
        events, self.events[:] = list(self.events), []
        for kind, data in events:
            if kind == "begin":
                self.headers = {}
                self._field = self._value = b""
            elif kind == "field":
                self._field += bytes(data)
            elif kind == "value":
                self._value += bytes(data)
            elif kind == "header_end":
                self.headers[self._field.decode("latin-1").strip().lower()] = self._value.strip()
                self._field = self._value = b""
            elif kind == "headers":
                await self._start_part()
            elif kind == "data":
                if self.in_file:
                    assert self.writer is not None
                    await self.writer.write(data)
            elif kind == "part_end":
                if self.in_file:
                    self.in_file, self.file_done = False, True
            elif kind == "end":
                self.ended = True

    async def _start_part(self) -> None:
        disposition, options = parse_options_header(self.headers.get("content-disposition", b""))
        if disposition != b"form-data" or options.get(b"name") != b"file":
            return  # another field: its bytes are skipped (and counted against the body cap)
        if self.writer is not None:
            raise BadRequest("send exactly one `file` field per upload")
        self.filename = _decode_header(options.get(b"filename", b"")) or "upload"
        part_type = self.headers.get("content-type", b"").decode("latin-1")
        self.content_type = clean_content_type(part_type, self.filename)
        self.writer = await self._stack.enter_async_context(
            self.store.writer(max_bytes=self.max_bytes, what="upload"))
        self.in_file = True


def _part_data(data: bytes | bytearray, start: int, end: int) -> bytes | memoryview:
    """A slice of the file's bytes as the parser reports it: a view of the network chunk when
    that is immutable ``bytes`` (copying every chunk was a tenth of a multipart upload's CPU
    time); a copy of anything else, which the parser might reuse before the queued events
    are handled."""
    if isinstance(data, bytes):
        return data if start == 0 and end == len(data) else memoryview(data)[start:end]
    return bytes(data[start:end])


def digits(text: str, max_len: int) -> bool:
    """``text`` is a plain decimal number (ASCII digits only: ``'²'.isdigit()`` is true, and
    ``int()`` refuses it) of at most ``max_len`` digits (``int()`` of 5000 digits is refused too)."""
    return 0 < len(text) <= max_len and text.isascii() and text.isdigit()


def _decode_header(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# -- list, metadata, delete ----------------------------------------------------------------


async def list_files(request: Request) -> Response:
    """``GET /v1/files?limit=&after=``: newest first; ``after`` is the last id of a page."""
    raw_limit = request.query_params.get("limit", "100")
    if not digits(raw_limit, 4) or not 1 <= int(raw_limit) <= 1000:
        raise InvalidRequest("limit must be an integer from 1 to 1000", field="limit")
    limit = int(raw_limit)
    after = request.query_params.get("after")
    if after is not None and not valid_id(after):
        raise InvalidRequest(f"after must be a file id ({ID_FORM}): the last id of the "
                             "previous page", field="after")
    records = await _store(request).alist(limit=limit + 1, after=after)
    has_more = len(records) > limit
    records = records[:limit]
    return JSONResponse({
        "object": "list", "data": records, "has_more": has_more,
        "first_id": records[0].file_id if records else None,
        "last_id": records[-1].file_id if records else None,
    })


async def get_file(request: Request) -> Response:
    """``GET /v1/files/{id}``: the FileRecord."""
    stored = await _store(request).aget(request.path_params["file_id"])
    return JSONResponse(stored.record)


async def delete_file(request: Request) -> Response:
    """``DELETE /v1/files/{id}``."""
    file_id = request.path_params["file_id"]
    await _store(request).adelete(file_id)
    return JSONResponse({"deleted": True, "file_id": file_id})


# -- download --------------------------------------------------------------------------------


async def download_file(request: Request) -> Response:
    """``GET|HEAD /v1/files/{id}/download`` with ETag/304 and single-range 206/416."""
    file_id = check_id(request.path_params["file_id"])
    return await file_response(request, await _store(request).aget(file_id))


async def file_response(request: Request, stored: StoredFile | Callable[[], StoredFile], *,
                        disposition: str = "attachment", headers: dict[str, str] | None = None,
                        data: bytes | None = None) -> Response:
    """A stored file's bytes as an HTTP answer: the one place downloads and sync results are
    served from, so both carry the same ETag, Range and safety headers.

    ``data``, the file's bytes already in memory (a sync job's small artifact, see
    :meth:`FileStore.recent`), is answered without any thread hop. Otherwise ``stored``
    may be a function that looks the file up (``lambda: store.get(file_id)``): the lookup, the
    open and the first 1 MiB read then share one thread hop instead of four."""
    if data is not None and not callable(stored):
        return _prepare_file_response(request, stored, disposition, headers, data)
    return await asyncio.to_thread(_prepare_file_response, request, stored, disposition, headers)


def _prepare_file_response(request: Request, stored: StoredFile | Callable[[], StoredFile],
                           disposition: str, headers: dict[str, str] | None,
                           data: bytes | None = None) -> Response:
    """Everything up to and including the first chunk of the body (in a worker thread unless
    the bytes are in ``data``)."""
    if callable(stored):
        stored = stored()
    record = stored.record
    etag = f'"{record.sha256}"' if record.sha256 else None
    headers = {
        **(headers or {}),
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, no-cache",
        "Last-Modified": formatdate(record.created_at, usegmt=True),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "sandbox",
    }
    if etag:
        headers["ETag"] = etag
    if etag and _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    fh: IO[bytes] | None = None
    if data is None:
        try:
            fh = open(stored.path, "rb")  # noqa: SIM115 - closed by _BlobResponse
        except FileNotFoundError:  # deleted between the lookup and the open
            raise NotFound(f"no file {record.file_id!r}; it was just deleted", code="file_not_found") from None
    try:
        size = os.fstat(fh.fileno()).st_size if fh is not None else len(data or b"")
        start, length, status = 0, size, 200
        byte_range = _requested_range(request, etag, size)
        if byte_range is not None:
            start, end = byte_range
            length, status = end - start + 1, 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        headers["Content-Type"] = record.content_type
        headers["Content-Disposition"] = content_disposition(record.filename, disposition)
        headers["Content-Length"] = str(length)
        body = request.method != "HEAD"
        head = b""
        if body and length:
            if fh is None:
                head = (data or b"")[start:start + length]
            else:
                fh.seek(start)
                head = fh.read(min(_READ_CHUNK, length))
        if fh is not None and (not body or len(head) >= length):
            fh.close()  # all there is to send is in hand
    except BaseException:
        if fh is not None:
            fh.close()
        raise
    return _BlobResponse(fh, start, length, status, headers, body=body, head=head)


def _etag_matches(header: str | None, etag: str) -> bool:
    """Weak comparison as RFC 9110 asks for If-None-Match."""
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(tag.strip().removeprefix("W/") == etag for tag in header.split(","))


def _requested_range(request: Request, etag: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range to send, ``None`` for the whole file; raises 416 when the range
    cannot be satisfied. Malformed or multi-range headers are ignored (RFC 9110 allows it)."""
    header = request.headers.get("range")
    if not header:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and (etag is None or if_range.strip() != etag):
        return None  # the client's copy is stale (or a date validator): send everything
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.strip().partition("-"))
    if not dash or not (first or last) or (first and not digits(first, 19)) or (last and not digits(last, 19)):
        return None  # malformed (also non-ASCII digits such as '²', or absurdly long numbers): ignored
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # syntactically invalid: ignore
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(f"the requested range is outside the file's {size} bytes",
                               headers={"Content-Range": f"bytes */{size}"}, size=size)


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII ``filename`` fallback plus the exact name as ``filename*``."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in ascii_name)
    value = f'{disposition}; filename="{ascii_name or "file"}"'
    if ascii_name != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


class _BlobResponse(Response):
    """Streams ``length`` bytes of an already open file from ``start``, 1 MiB at a time,
    beginning with ``head`` (the first chunk, read while the file was opened; the file is
    positioned just past it).

    The file is opened by the route, so a concurrent DELETE cannot turn into a 500 halfway.
    """

    def __init__(self, fh: IO[bytes] | None, start: int, length: int, status: int,
                 headers: dict[str, str], *, body: bool, head: bytes = b"") -> None:
        self.fh, self.start, self.length, self.send_body = fh, start, length, body
        self.head = head
        self.status_code = status
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            if not self.send_body:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            remaining = self.length - len(self.head)
            if self.head or remaining <= 0:
                await send({"type": "http.response.body", "body": self.head, "more_body": remaining > 0})
            while remaining > 0 and self.fh is not None:
                chunk = await asyncio.to_thread(self.fh.read, min(_READ_CHUNK, remaining))
                if not chunk:
                    break  # the file shrank under us; the client sees a short body
                remaining -= len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": remaining > 0})
            if remaining > 0:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if self.fh is not None:
                self.fh.close()
