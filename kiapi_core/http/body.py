"""Reading and decoding JSON request bodies without stalling the event loop or bloating memory.

A body up to ``KIAPI_MAX_BODY_MB`` (64 MiB) can be built to make a naive decoder slow and
huge: 60 MiB of ``[{},{},...]`` is twenty million Python dicts (3 GiB, seconds of GIL-holding C
and Python). The defence is to bound the *structure* before anything builds objects:

1. the body's ``[`` and ``{`` bytes are counted in slices of :data:`SCAN_SLICE_BYTES`
   (``bytes.count``, ~2 ms a slice), yielding to the loop between slices; more than
   :data:`MAX_JSON_CONTAINERS` is a 400 (an upper bound: brackets inside strings count too,
   which no real request comes near);
2. only then is the body decoded, in a worker thread and at most :data:`DECODE_SLOTS` at a
   time per app: with the containers bounded, msgspec's decode of the largest body holds the
   GIL for tens of milliseconds at most, and the depth check walks at most 100,000 items;
3. bodies over :data:`LARGE_BODY_BYTES` (or of unknown length) are read, decoded and submitted
   holding one of :data:`LARGE_BODY_SLOTS` slots, so twenty concurrent 63 MiB data URLs are
   processed a few at a time instead of all at once.

Memory stays a small multiple of the body size: the bytes, the decoded strings, and at most
100,000 small containers.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadRequest, KiapiError, MalformedJSON, PayloadTooLarge, UnsupportedMediaType

#: Deepest nesting of JSON arrays/objects accepted in a request body (no operation needs more).
MAX_JSON_DEPTH = 64
#: Most ``[``/``{`` bytes a body may hold (brackets inside strings included). A request with
#: every FileRef and LoRA an operation allows has a few hundred.
MAX_JSON_CONTAINERS = 100_000
#: Bytes counted per step of the structure scan before yielding to the event loop.
SCAN_SLICE_BYTES = 4 * 1024 * 1024
#: Bodies from this size on (and chunked ones) take one of the LARGE_BODY_SLOTS.
LARGE_BODY_BYTES = 1024 * 1024
LARGE_BODY_SLOTS = 4
#: Bodies decoded at once (each in a worker thread).
DECODE_SLOTS = 2
#: A body this small with this few arrays and objects is decoded on the event loop: a few
#: microseconds, where a worker thread costs two thread switches (#19, host speed).
INLINE_DECODE_BYTES = 8 * 1024
INLINE_DECODE_CONTAINERS = 32


class BodyTooComplex(BadRequest):
    code = "body_too_complex"


class BodyGate:
    """One app's bounds on concurrent body work (the app builds it; tests build their own)."""

    def __init__(self, *, large_slots: int = LARGE_BODY_SLOTS, decode_slots: int = DECODE_SLOTS) -> None:
        self.large = asyncio.Semaphore(large_slots)
        self.decode = asyncio.Semaphore(decode_slots)

    @contextlib.asynccontextmanager
    async def admit(self, request: Request) -> AsyncIterator[None]:
        """Hold a large-body slot for the body of ``request`` when it is (or may be) large."""
        declared = request.headers.get("content-length")
        small = declared is not None and declared.isascii() and declared.isdigit() \
            and len(declared) < 12 and int(declared) < LARGE_BODY_BYTES
        if small:
            yield
            return
        async with self.large:
            yield


def check_json_content_type(request: Request) -> None:
    """415 unless the body is declared as JSON. Form-encoded and text/plain bodies are what a
    foreign web page can send without a CORS preflight, so they are never read as JSON."""
    header = request.headers.get("content-type")
    content_type = (header or "").split(";")[0].strip().lower()
    if content_type == "application/json" or (content_type.startswith("application/")
                                              and content_type.endswith("+json")):
        return
    sent = f"Content-Type {content_type}" if content_type else "no Content-Type"
    raise UnsupportedMediaType(
        f"the request body must be JSON with Content-Type: application/json ({sent} was sent); "
        "with curl: curl -H 'Content-Type: application/json' -d '{...}' (or curl --json '{...}')")


async def read_body(request: Request, max_mb: float) -> bytearray:
    """The whole body, 413 as soon as it is known to exceed ``max_mb`` MiB. Gathered in one
    growing buffer (a list of chunks joined at the end would hold the body twice)."""
    limit = int(max_mb * 1024 * 1024)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        await drain(request)
        raise _too_large(max_mb, f"{int(declared)} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                await drain(request)
                raise _too_large(max_mb, "over")
            body += chunk
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the request body was complete") from None
    return body


def _too_large(max_mb: float, size: str) -> PayloadTooLarge:
    what = "over the" if size == "over" else f"{size}, over the"
    return PayloadTooLarge(f"request body is {what} {max_mb:g} MiB limit (KIAPI_MAX_BODY_MB); "
                           "upload large inputs with POST /v1/files and pass a file_id",
                           headers={"Connection": "close"})


async def decode_json(data: bytes | bytearray, gate: BodyGate, decoder: msgspec.json.Decoder) -> Any:
    """The decoded body (400 ``malformed_json`` / ``body_too_complex``), never blocking the loop."""
    if not data or data.isspace():
        raise MalformedJSON("the request body is empty; send a JSON object")
    containers = 0
    for start in range(0, len(data), SCAN_SLICE_BYTES):
        end = start + SCAN_SLICE_BYTES
        containers += data.count(b"[", start, end) + data.count(b"{", start, end)
        if containers > MAX_JSON_CONTAINERS:
            raise BodyTooComplex(
                f"the request body holds more than {MAX_JSON_CONTAINERS} JSON arrays and objects "
                "('[' and '{' characters, also inside strings); no operation needs that many")
        if end < len(data):
            await asyncio.sleep(0)
    if len(data) <= INLINE_DECODE_BYTES and containers <= INLINE_DECODE_CONTAINERS:
        return _decode(data, decoder)
    async with gate.decode:
        return await asyncio.to_thread(_decode, data, decoder)


def _decode(data: bytes | bytearray, decoder: msgspec.json.Decoder) -> Any:
    try:
        value = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedJSON(f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"the request body is not valid UTF-8 ({exc.reason} at byte {exc.start}); "
                            "send JSON encoded as UTF-8") from None
    except RecursionError:
        raise MalformedJSON(_too_deep()) from None
    if not depth_ok(value, MAX_JSON_DEPTH):
        raise MalformedJSON(_too_deep())
    return value


def _too_deep() -> str:
    return f"the request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels; flatten it"


def depth_ok(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` containers deep (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True


# -- slow bodies and refused bodies ------------------------------------------------------------

#: After ``KIAPI_BODY_TIMEOUT_S``, a body must have arrived at this average rate at least.
MIN_BODY_RATE_BYTES_S = 64 * 1024
#: A refused (413) body is read and discarded up to this much, so that clients that send the
#: whole body before reading (Python's urllib) see the answer instead of a broken pipe.
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_TIMEOUT_S = 10.0


class RequestTimeout(KiapiError):
    status = 408
    code = "request_timeout"


class BodyTimeout:
    """ASGI middleware: a request body that pauses for ``timeout_s`` or, after ``timeout_s``,
    arrives slower than :data:`MIN_BODY_RATE_BYTES_S` on average, ends with 408 and a closed
    connection (a client trickling one byte every few seconds would otherwise hold a
    connection, a file descriptor and a ``.partial`` file for as long as it liked)."""

    def __init__(self, app: ASGIApp, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = 0
        done = False

        async def timed_receive() -> Message:
            nonlocal received, done
            if done:
                return await receive()
            elapsed = loop.time() - started
            budget = max(self.timeout_s, received / MIN_BODY_RATE_BYTES_S) - elapsed
            try:
                # asyncio.timeout, not wait_for: no task per body chunk (#19, host speed)
                async with asyncio.timeout(min(self.timeout_s, max(budget, 0.001))):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"the request body arrived too slowly (it must finish within {self.timeout_s:g} s "
                    f"or keep arriving at {MIN_BODY_RATE_BYTES_S // 1024} KiB/s; KIAPI_BODY_TIMEOUT_S)",
                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                done = not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


async def drain(request: Request, *, max_bytes: int = DRAIN_MAX_BYTES, timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Read and discard what is left of a refused body, up to ``max_bytes`` and ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() \
            and (len(declared) > 12 or int(declared) > max_bytes):
        return  # too much to be worth reading: the connection is closed instead
    read = 0
    with contextlib.suppress(Exception):  # a timeout, a disconnect: the connection closes anyway
        async with asyncio.timeout(timeout_s):
            while read <= max_bytes:
                message = await request.receive()
                if message["type"] != "http.request":
                    return
                read += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return
