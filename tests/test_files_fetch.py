"""URL inputs: SSRF refusals (direct, by name, by redirect), pinning, size caps, timeouts.

No internet: a raw asyncio HTTP server on 127.0.0.1 plays every remote host. Tests that need
"a public host" exempt 127.0.0.1 in the AddressPolicy and map made-up names to addresses with
an injected resolver, so every *other* hop is checked exactly as in production.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from kiapi_core.errors import BadRequest
from kiapi_core.files.fetch import AddressPolicy, URLFetcher, classify
from kiapi_core.files.store import FileStore
from kiapi_core.validation import strip_url_secrets


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    _, target, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    path, _, query = target.partition("?")
    q = {k: v[0] for k, v in parse_qs(query).items()}

    def respond(status: str, body: bytes = b"", extra: str = "", length: bool = True) -> None:
        cl = f"Content-Length: {len(body)}\r\n" if length else ""
        writer.write(f"HTTP/1.1 {status}\r\n{cl}{extra}Connection: close\r\n\r\n".encode() + body)

    try:
        if path == "/img":
            respond("200 OK", b"\x89PNG fake", "Content-Type: image/png; charset=binary\r\n")
        elif path == "/host":
            respond("200 OK", headers.get("host", "").encode(), "Content-Type: text/plain\r\n")
        elif path == "/redirect":
            respond("302 Found", extra=f"Location: {q['to']}\r\n")
        elif path == "/loop":
            respond("301 Moved", extra="Location: /loop\r\n")
        elif path == "/big":
            respond("200 OK", b"x" * int(q["n"]), length="nolength" not in q)
        elif path == "/gzip":
            respond("200 OK", b"\x1f\x8b...", "Content-Encoding: gzip\r\n")
        elif path == "/missing":
            respond("404 Not Found", b"nope")
        elif path == "/drip":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(1000):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.05)
        elif path == "/hang":
            await asyncio.sleep(30)
        await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def server():
    srv = await asyncio.start_server(_serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", port
    srv.close()


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "files")


NAMES = {"public.example": ["127.0.0.1"], "internal.example": ["10.1.2.3"],
         "mixed.example": ["127.0.0.1", "192.168.1.1"]}


async def fake_resolver(host: str, port: int) -> list[str]:
    return NAMES[host]


def internet_fetcher(**kw) -> URLFetcher:
    """127.0.0.1 plays the internet; everything else is checked for real."""
    return URLFetcher(policy=AddressPolicy(exempt=["127.0.0.1"]), resolver=fake_resolver, **kw)


def nothing_stored(store: FileStore) -> bool:
    return store.list() == [] and os.listdir(store.root / ".partial") == []


@pytest.mark.parametrize("url,reason", [
    ("http://127.0.0.1/x", "loopback"),
    ("http://127.1.2.3:8080/x", "loopback"),
    ("http://10.0.0.7/x", "private"),
    ("http://192.168.0.1/x", "private"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://[::1]/x", "loopback"),
    ("http://[::ffff:127.0.0.1]/x", "IPv4-mapped loopback"),
    ("http://[fe80::1]/x", "link-local"),
    ("http://0.0.0.0/x", "unspecified"),
    ("https://localhost/x", "loopback"),
])
async def test_private_targets_refused(store: FileStore, url: str, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        await URLFetcher().fetch(url, store=store)
    assert info.value.code == "url_forbidden_address"
    assert info.value.extra["address_class"] == reason
    assert "KIAPI_ALLOW_PRIVATE_URLS=1" in info.value.detail
    assert nothing_stored(store)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/",
                                 "not a url", "http:///nohost"])
async def test_only_http_and_https(store: FileStore, url: str) -> None:
    with pytest.raises(BadRequest) as info:
        await URLFetcher().fetch(url, store=store)
    assert info.value.code == "url_invalid"


def test_classify() -> None:
    ip = ipaddress.ip_address
    assert classify(ip("8.8.8.8")) is None and classify(ip("2606:4700::1111")) is None
    assert classify(ip("100.64.0.1")) == "non-public"
    assert classify(ip("100.100.100.200")) == "cloud metadata"
    assert classify(ip("fd00:ec2::254")) == "cloud metadata"
    assert classify(ip("224.0.0.1")) == "multicast"
    assert classify(ip("2002:7f00:1::1")) == "6to4 loopback"
    assert classify(ip("240.0.0.1")) in ("reserved", "private")


async def test_allowed_fetch_records_source(server, store: FileStore) -> None:
    base, _ = server
    fetcher = URLFetcher(policy=AddressPolicy(allow_private=True))
    stored = await fetcher.fetch(f"{base}/img?sig=SECRET", store=store, stem="input-image",
                                 meta={"field": "image"})
    assert stored.path.read_bytes() == b"\x89PNG fake"
    assert stored.filename == "input-image.png" and stored.content_type == "image/png"
    assert stored.record.meta == {"field": "image", "source": "url", "url": f"{base}/img"}
    assert "SECRET" not in strip_url_secrets("http://u:pw@h/p?sig=SECRET#f")


async def test_connection_is_pinned_to_the_checked_address(server, store: FileStore) -> None:
    _, port = server
    stored = await internet_fetcher().fetch(f"http://public.example:{port}/host", store=store)
    assert stored.path.read_bytes() == f"public.example:{port}".encode()


async def test_name_resolving_to_private_refused(store: FileStore) -> None:
    for host in ("internal.example", "mixed.example"):
        with pytest.raises(BadRequest, match="private address .*resolves to"):
            await internet_fetcher().fetch(f"http://{host}/x", store=store)


@pytest.mark.parametrize("target,reason", [
    ("http://127.0.0.2:{port}/img", "loopback"),
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://internal.example/", "private"),
    ("http://[::1]:{port}/img", "loopback"),
])
async def test_every_redirect_hop_is_checked(server, store: FileStore, target: str, reason: str) -> None:
    base, port = server
    with pytest.raises(BadRequest) as info:
        await internet_fetcher().fetch(f"{base}/redirect?to={target.format(port=port)}", store=store)
    assert info.value.extra["address_class"] == reason
    assert nothing_stored(store)


async def test_redirects_followed_within_limits(server, store: FileStore) -> None:
    base, port = server
    stored = await internet_fetcher().fetch(f"{base}/redirect?to=/img", store=store)
    assert stored.path.read_bytes() == b"\x89PNG fake" and stored.record.meta["redirects"] == 1
    with pytest.raises(BadRequest, match="redirected more than 5"):
        await internet_fetcher().fetch(f"{base}/loop", store=store)
    with pytest.raises(BadRequest, match="http or https"):
        await internet_fetcher().fetch(f"{base}/redirect?to=file:///etc/passwd", store=store)


async def test_size_cap(server, store: FileStore) -> None:
    base, _ = server
    fetcher = internet_fetcher(max_bytes=1000)
    assert (await fetcher.fetch(f"{base}/big?n=1000", store=store)).record.size == 1000
    store.delete(store.list()[0].file_id)
    for url in (f"{base}/big?n=5000", f"{base}/big?n=5000&nolength=1"):
        with pytest.raises(BadRequest) as info:
            await fetcher.fetch(url, store=store)
        assert info.value.code == "url_too_large" and "KIAPI_MAX_URL_MB" in info.value.detail
    assert nothing_stored(store)


@pytest.mark.parametrize("path", ["/drip", "/hang"])
async def test_total_timeout(server, store: FileStore, path: str) -> None:
    base, _ = server
    started = time.monotonic()
    with pytest.raises(BadRequest) as info:
        await internet_fetcher(timeout_s=0.5).fetch(f"{base}{path}", store=store)
    assert info.value.code == "url_timeout" and "KIAPI_URL_TIMEOUT_S" in info.value.detail
    assert time.monotonic() - started < 2
    assert nothing_stored(store)


async def test_errors_and_compression(server, store: FileStore) -> None:
    base, _ = server
    with pytest.raises(BadRequest, match="HTTP 404"):
        await internet_fetcher().fetch(f"{base}/missing", store=store)
    with pytest.raises(BadRequest, match="Content-Encoding 'gzip'"):
        await internet_fetcher().fetch(f"{base}/gzip", store=store)
    with pytest.raises(BadRequest, match="could not be fetched"):
        await internet_fetcher().fetch("http://127.0.0.1:1/closed", store=store)
    assert nothing_stored(store)


@pytest.fixture
def tls_cert(tmp_path: Path):
    """A self-signed certificate for public.example (needs the openssl command)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=public.example", "-addext", "subjectAltName=DNS:public.example"],
                   check=True, capture_output=True)
    return key, cert


async def test_https_pinned_keeps_sni_and_certificate_check(tls_cert, store: FileStore) -> None:
    import ssl

    import httpx

    key, cert = tls_cert
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    srv = await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    client_ctx = ssl.create_default_context(cafile=str(cert))
    NAMES["other.example"] = ["127.0.0.1"]
    try:
        fetcher = internet_fetcher(transport=lambda: httpx.AsyncHTTPTransport(verify=client_ctx))
        stored = await fetcher.fetch(f"https://public.example:{port}/host", store=store)
        assert stored.path.read_bytes() == f"public.example:{port}".encode()
        with pytest.raises(BadRequest, match="could not be fetched"):  # cert is not for this name
            await fetcher.fetch(f"https://other.example:{port}/host", store=store)
    finally:
        del NAMES["other.example"]
        srv.close()
