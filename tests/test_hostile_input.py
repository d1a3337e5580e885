"""Hostile input through the HTTP API, in one place.

Every case must be answered with a clear 4xx *before* anything reaches the model thread, and
leave nothing behind: no job (``GET /v1/jobs`` stays empty) and no file (``GET /v1/files``
unchanged, nothing left in ``files/.partial``). The units behind each check have their own
tests (files, fetch, resolve, ernie dataset); this file proves the whole request path.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import struct
import zipfile
import zlib

import msgspec
import pytest

import kiapi_echo
from kiapi_core.files.fetch import AddressPolicy, URLFetcher

RENDER = "/v1/text/echo/render"


# --- helpers ----------------------------------------------------------------------------------

def png(size=(32, 32), color=(10, 200, 30)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels but holds (almost) no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def make_zip(entries: dict[str, bytes | str], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, target)
    return buffer.getvalue()


def image_ref(kind: str, value: str) -> dict:
    return {"type": kind, kind: value}


class Guard:
    """Snapshots files before a hostile request; checks nothing was added and no job exists."""

    def __init__(self, http) -> None:
        self.http = http

    async def __aenter__(self) -> Guard:
        self.files = await self._files()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        assert (await self.http.get("/v1/jobs")).json()["data"] == [], "a job was created"
        assert await self._files() == self.files, "a file was left behind"
        partial = self.http.host.files.root / ".partial"
        assert os.listdir(partial) == [], "a partial file was left behind"

    async def _files(self) -> list[str]:
        return [f["file_id"] for f in (await self.http.get("/v1/files", params={"limit": 1000})).json()["data"]]


def assert_error(response, status: int, *fragments: str, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["detail"], body
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body["detail"])
    if code is not None:
        assert body["code"] == code, body
    return body


@pytest.fixture
async def echo(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], max_body_mb=0.25, max_data_url_mb=0.01,
                                    url_timeout_s=1.0, max_url_mb=0.01) as http:
        yield http


# --- request bodies ---------------------------------------------------------------------------

async def test_body_over_the_limit_is_413_declared_or_streamed(echo):
    big = b'{"text": "' + b"x" * 300_000 + b'"}'
    async with Guard(echo):
        r = await echo.post(RENDER, content=big, headers={"content-type": "application/json"})
        assert_error(r, 413, "KIAPI_MAX_BODY_MB", code="payload_too_large")

        async def chunks():
            for start in range(0, len(big), 16_384):
                yield big[start:start + 16_384]

        r = await echo.post(RENDER, content=chunks(), headers={"content-type": "application/json"})
        assert_error(r, 413, "KIAPI_MAX_BODY_MB")


@pytest.mark.parametrize("content", [
    b"[" * 100_000,
    b"{" * 50_000,
    b'{"text": "a", "extra": ' + b"[" * 100 + b"]" * 100 + b"}",  # valid JSON, absurdly deep
], ids=["open-brackets", "open-braces", "valid-but-deep"])
async def test_deeply_nested_json_is_400(echo, content):
    async with Guard(echo):
        r = await echo.post(RENDER, content=content, headers={"content-type": "application/json"})
        assert_error(r, 400, code="malformed_json")


async def test_invalid_utf8_json_is_400(echo):
    async with Guard(echo):
        r = await echo.post(RENDER, content=b'{"text": "\xff\xfe caf\xe9"}',
                            headers={"content-type": "application/json"})
        assert_error(r, 400, "UTF-8", code="malformed_json")


# --- file ids, data URLs, images -------------------------------------------------------------

@pytest.mark.parametrize("file_id", ["../../etc/passwd", "file_XYZ", "file_" + "a" * 31, "file_" + "A" * 32,
                                     "file_" + "a" * 32 + "/../x", "\x00"])
async def test_malformed_file_ids_are_400(echo, file_id):
    async with Guard(echo):
        r = await echo.post(RENDER, json={"text": "a", "image": image_ref("file_id", file_id)})
        assert_error(r, 400, "file_", code="invalid_file_id")
        if file_id.isprintable():
            assert (await echo.get(f"/v1/files/{file_id.replace('/', '%2F')}")).status_code == 404


async def test_oversize_data_url_is_413(echo):
    import base64

    data_url = "data:image/png;base64," + base64.b64encode(os.urandom(20_000)).decode()
    async with Guard(echo):
        r = await echo.post(RENDER, json={"text": "a", "image": image_ref("data_url", data_url)})
        assert_error(r, 413, "KIAPI_MAX_DATA_URL_MB", "POST /v1/files", code="data_url_too_large")


@pytest.mark.parametrize("payload,fragment", [
    (b"just some text, not an image", "not a readable image"),
    (b"%PDF-1.4 posing as a png", "not a readable image"),
    (png((64, 64))[:80], "could not be decoded"),               # truncated
    (png_header_only(12_000, 12_000), "KIAPI_MAX_IMAGE_PIXELS"),  # 144 M pixels, over our limit
    (png_header_only(60_000, 60_000), "decompression bomb"),    # Pillow's own bomb guard
], ids=["text", "pdf", "truncated", "bomb", "huge-bomb"])
async def test_bad_images_are_400_whatever_the_ref(echo, payload, fragment):
    import base64

    upload = await echo.upload(payload, "photo.png", "image/png")  # a user's file: stays
    refs = [image_ref("file_id", upload)]
    if len(payload) < 7000:
        refs.append(image_ref("data_url", "data:image/png;base64," + base64.b64encode(payload).decode()))
    async with Guard(echo):
        for ref in refs:
            r = await echo.post(RENDER, json={"text": "a", "image": ref})
            body = assert_error(r, 400, fragment, code="invalid_input")
            assert body["field"] == "image"


# --- URL inputs (SSRF, slow and endless responses) -------------------------------------------

async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        path = head.split(" ", 2)[1]
        if path.startswith("/redirect?to="):
            writer.write(f"HTTP/1.1 302 Found\r\nLocation: {path[13:]}\r\nContent-Length: 0\r\n\r\n".encode())
        elif path == "/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n\r\n")
            while True:
                writer.write(b"\x00" * 65_536)
                await writer.drain()
        elif path == "/drip":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
            for _ in range(5000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/hang":
            await asyncio.sleep(30)
        await writer.drain()
    except (ConnectionError, asyncio.CancelledError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def server():
    srv = await asyncio.start_server(_serve, "127.0.0.1", 0)
    yield srv.sockets[0].getsockname()[1]
    srv.close()


@pytest.fixture
def internet(monkeypatch):
    """127.0.0.1 plays a public host; made-up names resolve as listed; all else is real."""
    names = {"public.example": ["127.0.0.1"], "internal.example": ["10.1.2.3"],
             "metadata.example": ["169.254.169.254"]}

    async def resolver(host: str, port: int) -> list[str]:
        return names[host]

    def from_settings(cls, settings, **overrides):
        return cls(policy=AddressPolicy(exempt=["127.0.0.1"]), resolver=resolver,
                   timeout_s=settings.url_timeout_s, max_bytes=int(settings.max_url_mb * 2**20))

    monkeypatch.setattr(URLFetcher, "from_settings", classmethod(from_settings))


@pytest.mark.parametrize("url,klass", [
    ("http://127.0.0.1:{port}/x", "loopback"),
    ("http://[::1]:{port}/x", "loopback"),
    ("http://10.0.0.8/x", "private"),
    ("http://192.168.1.20/x", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://localhost:{port}/x", "loopback"),  # by DNS name (the system resolver)
])
async def test_urls_to_internal_addresses_are_refused(echo, server, url, klass):
    async with Guard(echo):
        r = await echo.post(RENDER, json={"text": "a", "image": image_ref("url", url.format(port=server))})
        body = assert_error(r, 400, klass, "KIAPI_ALLOW_PRIVATE_URLS", code="url_forbidden_address")
        assert body["address_class"] == klass


@pytest.mark.parametrize("target,klass", [
    ("http://internal.example/x", "private"),                 # by DNS name
    ("http://metadata.example/latest/meta-data/", "cloud metadata"),
])
async def test_names_resolving_inside_are_refused(echo, internet, target, klass):
    async with Guard(echo):
        r = await echo.post(RENDER, json={"text": "a", "image": image_ref("url", target)})
        assert_error(r, 400, klass, "resolves to", code="url_forbidden_address")


@pytest.mark.parametrize("target,klass", [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://127.0.0.2:{port}/x", "loopback"),
    ("http://internal.example/", "private"),
])
async def test_redirects_to_internal_addresses_are_refused(echo, internet, server, target, klass):
    url = f"http://public.example:{server}/redirect?to={target.format(port=server)}"
    async with Guard(echo):
        r = await echo.post(RENDER, json={"text": "a", "image": image_ref("url", url)})
        assert_error(r, 400, klass, code="url_forbidden_address")


@pytest.mark.parametrize("path,code,fragment", [
    ("/endless", "url_too_large", "KIAPI_MAX_URL_MB"),
    ("/drip", "url_timeout", "KIAPI_URL_TIMEOUT_S"),
    ("/hang", "url_timeout", "KIAPI_URL_TIMEOUT_S"),
])
async def test_slow_and_endless_responses_are_cut_off(echo, internet, server, path, code, fragment):
    async with Guard(echo):
        r = await echo.post(RENDER, json={"text": "a", "image": image_ref("url", f"http://public.example:{server}{path}")})
        assert_error(r, 400, fragment, code=code)


# --- training dataset ZIPs (the real ernie plugin, demo mode) --------------------------------

@pytest.fixture
async def ernie(kiapi_client_factory):
    kiapi_ernie = pytest.importorskip("kiapi_ernie")
    async with kiapi_client_factory(plugins=[kiapi_ernie]) as http:
        yield http


def _small_limits(http, **changes) -> None:
    settings = http.host.plugin_settings("ernie")
    http.host._plugin_settings["ernie"] = msgspec.structs.replace(settings, **changes)


GOOD = {"a.png": png(), "a.txt": "a red square"}


@pytest.mark.parametrize("name,entries,symlinks,fragment", [
    ("bomb", {**GOOD, "b.png": b"\x00" * (8 << 20), "b.txt": "zeros"}, None, "zip bomb"),
    ("slip", {**GOOD, "../evil.png": png(), "../evil.txt": "x"}, None, "'..'"),
    ("absolute", {**GOOD, "/etc/evil.png": png(), "/etc/evil.txt": "x"}, None, "absolute paths"),
    ("symlink", GOOD, {"c.png": "/etc/passwd"}, "symbolic links"),
    ("not-images", {"a.png": b"not an image", "a.txt": "x"}, None, "not a readable image"),
    ("truncated", {"a.png": png((64, 64))[:70], "a.txt": "x"}, None, "could not be decoded"),
    ("image-bomb", {"a.png": png_header_only(60_000, 60_000), "a.txt": "x"}, None, "decompression bomb"),
    ("not-a-zip", None, None, "not a readable ZIP"),
])
async def test_hostile_dataset_zips_are_400(ernie, name, entries, symlinks, fragment):
    payload = make_zip(entries, symlinks=symlinks) if entries is not None else b"PK\x03\x04 nope"
    dataset = await ernie.upload(payload, f"{name}.zip", "application/zip")
    async with Guard(ernie):
        r = await ernie.post("/v1/image/ernie/train", json={"dataset": image_ref("file_id", dataset)})
        assert_error(r, 400, "dataset", fragment, code="invalid_input")


async def test_dataset_total_size_limit(ernie):
    _small_limits(ernie, dataset_max_mb=1.0)
    payload = make_zip({**GOOD, "b.png": os.urandom(2 << 20), "b.txt": "noise"})
    dataset = await ernie.upload(payload, "big.zip", "application/zip")
    async with Guard(ernie):
        r = await ernie.post("/v1/image/ernie/train", json={"dataset": image_ref("file_id", dataset)})
        assert_error(r, 400, "KIAPI_ERNIE_DATASET_MAX_MB", code="invalid_input")
