"""The /v1/files endpoints through a minimal Starlette app (swap the fixture for the host kit)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.applications import Starlette

from kiapi_core.errors import KiapiError
from kiapi_core.files.routes import content_disposition, routes
from kiapi_core.files.store import FileStore
from kiapi_core.http.responses import error_response
from kiapi_core.settings import Settings

MiB = 1024 * 1024


async def _render(request, exc):  # starlette handler signature
    return error_response(exc)


@pytest.fixture
def files_app(tmp_path: Path):
    """The Files API alone: ``(app, store)`` with a 2 MiB upload cap."""
    settings = Settings(data_dir=str(tmp_path), max_upload_mb=2)
    store = FileStore(tmp_path / "files")
    app = Starlette(routes=routes(), exception_handlers={KiapiError: _render})
    app.state.host = SimpleNamespace(settings=settings, files=store)
    return app, store


@pytest.fixture
async def client(files_app):
    app, _ = files_app
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://kiapi") as c:
        yield c


async def upload(client: httpx.AsyncClient, content: bytes, name: str = "a.bin",
                 ctype: str = "application/octet-stream") -> httpx.Response:
    return await client.post("/v1/files", files={"file": (name, content, ctype)})


async def test_json_upload_downloads_byte_identical(client) -> None:
    payload = b'{"file_id": "not the sidecar", "n": [1, 2, 3]}\n'
    r = await upload(client, payload, "data.json", "application/json")
    assert r.status_code == 201, r.text
    rec = r.json()
    assert r.headers["location"] == f"/v1/files/{rec['file_id']}"
    assert rec["filename"] == "data.json" and rec["size"] == len(payload)
    assert rec["content_type"] == "application/json" and rec["meta"] == {"source": "upload"}
    d = await client.get(f"/v1/files/{rec['file_id']}/download")
    assert d.status_code == 200 and d.content == payload
    assert d.headers["content-type"] == "application/json"
    assert d.headers["content-disposition"] == 'attachment; filename="data.json"'
    assert d.headers["etag"] == f'"{rec["sha256"]}"'
    assert d.headers["x-content-type-options"] == "nosniff"
    meta = await client.get(f"/v1/files/{rec['file_id']}")
    assert meta.json() == rec


async def test_upload_with_other_fields_and_unicode_name(client) -> None:
    r = await client.post("/v1/files", data={"purpose": "input"},
                          files={"file": ("bild äö x.png", b"\x89PNG..", "image/png")})
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["filename"] == "bild äö x.png"
    d = await client.get(f"/v1/files/{rec['file_id']}/download")
    assert d.headers["content-disposition"] == (
        "attachment; filename=\"bild ao x.png\"; filename*=UTF-8''bild%20%C3%A4%C3%B6%20x.png")


def test_content_disposition_escapes() -> None:
    assert content_disposition('a"b\\c.txt') == 'attachment; filename="a_b_c.txt"; filename*=UTF-8\'\'a%22b%5Cc.txt'
    assert content_disposition("日本.png").startswith('attachment; filename=".png"; filename*=')


async def test_upload_errors(client, files_app) -> None:
    _, store = files_app
    r = await client.post("/v1/files", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = await client.post("/v1/files", files={"other": ("a", b"x")})
    assert r.status_code == 422 and "`file`" in r.json()["detail"]
    r = await client.post("/v1/files", files=[("file", ("a", b"x")), ("file", ("b", b"y"))])
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    body = b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nhalf"
    r = await client.post("/v1/files", content=body,
                          headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 400 and "closing boundary" in r.json()["detail"]
    assert store.list() == [] and os.listdir(store.root / ".partial") == []


async def test_size_cap_413_streamed_and_up_front(client, files_app) -> None:
    _, store = files_app
    r = await upload(client, b"x" * (2 * MiB + 1))
    assert r.status_code == 413 and "KIAPI_MAX_UPLOAD_MB" in r.json()["detail"]
    assert r.json()["code"] == "payload_too_large"
    r = await client.post("/v1/files", content=b"", headers={
        "content-type": "multipart/form-data; boundary=B", "content-length": str(10 * MiB)})
    assert r.status_code == 413
    ok = await upload(client, b"x" * (2 * MiB))
    assert ok.status_code == 201
    assert [f.file_id for f in store.list()] == [ok.json()["file_id"]]
    assert os.listdir(store.root / ".partial") == []


async def test_range_head_etag(client) -> None:
    payload = bytes(range(256)) * 4
    fid = (await upload(client, payload)).json()["file_id"]
    url = f"/v1/files/{fid}/download"
    r = await client.get(url, headers={"Range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == payload[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(payload)}"
    assert r.headers["content-length"] == "10"
    r = await client.get(url, headers={"Range": "bytes=-5"})
    assert r.status_code == 206 and r.content == payload[-5:]
    r = await client.get(url, headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == payload[1000:]
    r = await client.get(url, headers={"Range": "bytes=5000-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(payload)}"
    assert r.json()["code"] == "range_not_satisfiable"
    for ignored in ("bytes=0-1,5-6", "items=0-5", "bytes=abc", "bytes=9-3"):
        r = await client.get(url, headers={"Range": ignored})
        assert r.status_code == 200 and r.content == payload, ignored
    etag = r.headers["etag"]
    r = await client.get(url, headers={"Range": "bytes=0-0", "If-Range": etag})
    assert r.status_code == 206 and r.content == payload[:1]
    r = await client.get(url, headers={"Range": "bytes=0-0", "If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == len(payload)
    r = await client.get(url, headers={"If-None-Match": f'"x", W/{etag}'})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == etag
    r = await client.head(url)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(payload)) and r.headers["accept-ranges"] == "bytes"


async def test_list_paging_and_delete(client) -> None:
    ids = [(await upload(client, b"%d" % i, f"{i}.txt")).json()["file_id"] for i in range(5)]
    r = (await client.get("/v1/files", params={"limit": 2})).json()
    assert r["object"] == "list" and [f["file_id"] for f in r["data"]] == ids[::-1][:2]
    assert r["has_more"] is True and r["last_id"] == ids[3]
    r2 = (await client.get("/v1/files", params={"limit": 10, "after": r["last_id"]})).json()
    assert [f["file_id"] for f in r2["data"]] == ids[:3][::-1] and r2["has_more"] is False
    for bad in ({"limit": 0}, {"limit": "x"}, {"limit": 5000}, {"after": "nope"}):
        assert (await client.get("/v1/files", params=bad)).status_code == 422
    d = await client.delete(f"/v1/files/{ids[0]}")
    assert d.json() == {"deleted": True, "file_id": ids[0]}
    assert (await client.get(f"/v1/files/{ids[0]}")).status_code == 404
    assert (await client.delete(f"/v1/files/{ids[0]}")).status_code == 404


@pytest.mark.parametrize("bad", ["nope", "file_123", "file_" + "g" * 32, "..%2F..%2Fsettings",
                                 "file_" + "a" * 32 + ".json", "FILE_" + "a" * 32])
async def test_malformed_ids_404(client, bad: str) -> None:
    for method, suffix in (("GET", ""), ("GET", "/download"), ("HEAD", "/download"), ("DELETE", "")):
        r = await client.request(method, f"/v1/files/{bad}{suffix}")
        assert r.status_code == 404, (method, bad)
        if method != "HEAD" and "/" not in bad.replace("%2F", "/"):  # a slash never routes here
            assert "32 lowercase hex" in r.json()["detail"]


async def test_expired_file_404(tmp_path: Path, files_app, client) -> None:
    _, store = files_app
    store.ttl_s = 0.01
    fid = (await upload(client, b"x")).json()["file_id"]
    time.sleep(0.02)
    assert (await client.get(f"/v1/files/{fid}/download")).status_code == 404


def _vm_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


UPLOAD_MB = int(os.environ.get("KIAPI_TEST_UPLOAD_MB", "1024"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
async def test_big_upload_keeps_memory_flat(files_app) -> None:
    """Stream UPLOAD_MB (1 GiB by default; KIAPI_TEST_UPLOAD_MB to change) through the ASGI app
    and sample RSS while it runs: growth must stay under 64 MiB."""
    app, store = files_app
    app.state.host.settings = Settings(data_dir=str(store.root), max_upload_mb=UPLOAD_MB + 1)
    block = b"\xa5" * MiB
    head = b'--BOUND\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
    tail = b"\r\n--BOUND--\r\n"
    total = len(head) + UPLOAD_MB * MiB + len(tail)
    parts = iter([head] + [block] * UPLOAD_MB + [tail])

    async def receive():
        chunk = next(parts, None)
        return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    baseline, peak, stop = _vm_rss(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _vm_rss())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    scope = {"type": "http", "method": "POST", "path": "/v1/files", "raw_path": b"/v1/files",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("kiapi", 80), "client": ("127.0.0.1", 1), "headers": [
                 (b"content-type", b"multipart/form-data; boundary=BOUND"),
                 (b"content-length", str(total).encode())]}
    try:
        await app(scope, receive, send)
    finally:
        stop.set()
        sampler.join()
    assert sent[0]["status"] == 201, sent
    stored = store.list()[0]
    assert stored.size == UPLOAD_MB * MiB
    growth = peak[0] - baseline
    print(f"RSS growth {growth / MiB:.1f} MiB")
    assert growth < 64 * MiB, f"RSS grew by {growth / MiB:.1f} MiB during a {UPLOAD_MB} MiB upload"
    store.delete(stored.file_id)


async def test_hostile_multipart_headers(client, files_app) -> None:
    _, store = files_app
    many = "".join(f"X-H{i}: v\r\n" for i in range(20))
    for extra in (many, f"X-Long: {'a' * 10000}\r\n"):
        body = (f'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n{extra}\r\n'
                "abc\r\n--B--\r\n").encode()
        r = await client.post("/v1/files", content=body,
                              headers={"content-type": "multipart/form-data; boundary=B"})
        assert r.status_code == 400 and "malformed multipart" in r.json()["detail"]
    assert store.list() == []


async def test_client_disconnect_mid_upload_leaves_nothing(files_app) -> None:
    app, store = files_app
    messages = iter([
        {"type": "http.request", "more_body": True,
         "body": b'--B\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n' + b"x" * 5000},
        {"type": "http.disconnect"},
    ])

    async def receive():
        return next(messages)

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/v1/files", "raw_path": b"/v1/files",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("kiapi", 80), "client": ("127.0.0.1", 1),
             "headers": [(b"content-type", b"multipart/form-data; boundary=B")]}
    await app(scope, receive, send)
    assert store.list() == [] and os.listdir(store.root / ".partial") == []
    assert [n for n in os.listdir(store.root) if not n.startswith(".")] == []
