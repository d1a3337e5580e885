"""Issue #15: no request, page or configuration can stall, bloat or hijack the server.

Each case of the hostile review, through HTTP on an in-process host (the cases that need a real
socket, a real process or a signal are in ``test_hardening_server.py``). Numbers refer to the
issue's cases; docs/security.md and docs/reliability.md list them.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

import kiapi_echo

RENDER = "/v1/text/echo/render"
MiB = 1024 * 1024


@pytest.fixture
async def echo(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        yield http


def _peak_rss_reset() -> bool:
    """Reset this process's peak RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


async def _max_health_latency_s(http, until: asyncio.Future) -> float:
    worst = 0.0
    while not until.done():
        started = time.perf_counter()
        assert (await http.get("/health")).status_code == 200
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.01)
    return worst


# --- 1. wide JSON bodies ------------------------------------------------------------------------

async def test_1_wide_body_neither_blocks_the_loop_nor_bloats_memory(echo):
    body = b'{"text": "a", "junk": [' + b"{}," * (20 * MiB) + b"{}]}"  # 60 MiB of empty objects
    measured = _peak_rss_reset()
    base_mb = _peak_rss_mb() if measured else 0.0
    request = asyncio.ensure_future(echo.post(RENDER, content=body, headers={"content-type": "application/json"}))
    worst_s = await _max_health_latency_s(echo, request)
    r = await request
    assert r.status_code == 400 and r.json()["code"] == "body_too_complex", r.text
    assert worst_s < 0.25, f"/health waited {worst_s:.3f}s behind one request body"
    if measured:  # the body (60 MiB) is held by the test and the server: a few copies at most
        assert _peak_rss_mb() - base_mb < 400, _peak_rss_mb() - base_mb
    assert (await echo.get("/v1/jobs")).json()["data"] == []


async def test_1_large_string_bodies_still_work(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], max_text_chars=40 * MiB) as http:
        text = "x" * (30 * MiB)
        r = await http.post(RENDER, json={"text": text, "mode": "async"})
        assert r.status_code == 202, r.text[:300]
        job = await http.wait_job(r.json()["job_id"])
        assert job["status"] == "succeeded"


# --- 3. CSRF and DNS rebinding ----------------------------------------------------------------------

@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:8000", "kiapi.test"])
async def test_3_foreign_host_names_are_refused(echo, host):
    for method, path in (("GET", "/v1/files"), ("POST", RENDER), ("GET", "/docs")):
        r = await echo.request(method, path, json={"text": "a"}, headers={"Host": host})
        assert r.status_code == 400 and r.json()["code"] == "host_not_allowed", r.text
        assert "KIAPI_ALLOWED_HOSTS" in r.json()["detail"]
    assert (await echo.get("/v1/jobs")).json()["data"] == []
    assert (await echo.get("/health", headers={"Host": host})).status_code == 200  # probes by service name


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "192.168.1.7:8000",
                                  "kiapi.localhost"])
async def test_3_loopback_names_and_addresses_are_served(echo, host):
    assert (await echo.get("/v1/files", headers={"Host": host})).status_code == 200


async def test_3_allowed_hosts_setting(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], allowed_hosts=["gpu-box.lan"]) as http:
        assert (await http.get("/v1/files", headers={"Host": "gpu-box.lan:8000"})).status_code == 200
        assert (await http.get("/v1/files", headers={"Host": "other.lan"})).status_code == 400


async def test_3_foreign_origins_cannot_change_state(echo):
    upload = {"file": ("a.txt", b"hello", "text/plain")}
    foreign = {"Origin": "https://attacker.example"}
    assert (await echo.post(RENDER, json={"text": "a"}, headers=foreign)).status_code == 403
    r = await echo.post("/v1/files", files=upload, headers=foreign)
    assert r.status_code == 403 and r.json()["code"] == "origin_not_allowed"
    assert "KIAPI_CORS_ORIGINS" in r.json()["detail"]
    assert (await echo.post("/v1/files", files=upload, headers={"Origin": "null"})).status_code == 403
    assert (await echo.post("/v1/files", files=upload, headers={"Sec-Fetch-Site": "cross-site"})).status_code == 403
    assert (await echo.get("/v1/files")).json()["data"] == []
    assert (await echo.get("/v1/jobs")).json()["data"] == []
    # the server's own pages (same origin) and clients without Origin keep working
    same = {"Origin": "http://localhost"}
    assert (await echo.post(RENDER, json={"text": "a"}, headers=same)).status_code == 200
    assert (await echo.post("/v1/files", files=upload)).status_code == 201
    file_id = (await echo.get("/v1/files")).json()["data"][0]["file_id"]
    assert (await echo.delete(f"/v1/files/{file_id}", headers=foreign)).status_code == 403
    assert (await echo.delete(f"/v1/files/{file_id}", headers=same)).status_code == 200


async def test_3_cors_origins_get_real_cors(kiapi_client_factory):
    origin = "https://studio.example"
    async with kiapi_client_factory(plugins=[kiapi_echo], cors_origins=[origin]) as http:
        pre = await http.options(RENDER, headers={
            "Origin": origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        r = await http.post(RENDER, json={"text": "a"}, headers={"Origin": origin, "Accept": "application/json"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        assert "x-kiapi-job-id" in r.headers["access-control-expose-headers"].lower()
        r = await http.post(RENDER, json={"text": "a"}, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403


# --- 7. control characters in unknown keys ----------------------------------------------------------

async def test_7_control_characters_in_field_names_make_a_legal_header(echo):
    r = await echo.post(RENDER, json={"text": "a", "a\r\nSet-Cookie: x=1": 1, "b\x00\x7f": 2})
    assert r.status_code == 200, r.text
    warning = r.headers["x-kiapi-warnings"]
    assert "\\x0d\\x0aSet-Cookie" in warning and "set-cookie" not in r.headers
    assert r.headers["x-kiapi-job-id"]


async def test_7_a_failure_after_the_job_exists_still_names_the_job(echo, monkeypatch):
    from kiapi_core.http import operations

    async def broken(*args, **kwargs):
        raise RuntimeError("the answer could not be built")

    monkeypatch.setattr(operations, "respond_finished", broken)
    r = await echo.post(RENDER, json={"text": "a"})
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    job_id = r.json()["job_id"]
    assert r.headers["x-kiapi-job-id"] == job_id and f"GET /v1/jobs/{job_id}" in r.json()["detail"]
    assert (await echo.wait_job(job_id))["status"] == "succeeded"


# --- 14. Accept decided before queueing --------------------------------------------------------------

async def test_14_unacceptable_accept_is_406_before_queueing(echo):
    r = await echo.post(RENDER, json={"text": "a"}, headers={"Accept": "application/pdf"})
    assert r.status_code == 406 and "job_id" not in r.json()
    assert (await echo.get("/v1/jobs")).json()["data"] == []


# --- 15. small ones --------------------------------------------------------------------------------

async def test_15_405_lists_every_method_of_the_path(echo):
    r = await echo.patch("/v1/files")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    # DELETE: bulk delete; PUT: raw-body upload
    assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST", "PUT", "DELETE"}
    assert "GET or POST" in r.json()["detail"]
    r = await echo.get(RENDER)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "application/json" in r.json()["detail"]


async def test_15_trailing_slash_does_not_reflect_the_host(echo):
    r = await echo.get("/v1/files/", headers={"Host": "127.0.0.1:9"})
    assert r.status_code == 404 and "location" not in r.headers
    assert "did you mean /v1/files?" in r.json()["detail"]


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/v1/text/echo/docs", "/v1/text/echo/redoc"])
async def test_15_docs_pages_have_csp_and_frame_protection(echo, path):
    r = await echo.get(path)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self' 'sha256-" in csp
    assert r.headers["x-frame-options"] == "DENY"


# --- 2. the disk: training bounds and the storage quota ---------------------------------------------

async def test_2_storage_quota_refuses_uploads_and_artifacts_with_507(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], max_storage_gb=0.001) as http:  # 1 MB
        first = await http.upload(os.urandom(600_000), "a.bin")
        r = await http.post("/v1/files", files={"file": ("b.bin", os.urandom(600_000), "application/octet-stream")})
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text
        body = r.json()
        assert body["used_bytes"] >= 600_000 and body["limit_bytes"] == 1_000_000
        assert "DELETE /v1/files/" in body["detail"] and "KIAPI_MAX_STORAGE_GB" in body["detail"]
        assert len((await http.get("/v1/files")).json()["data"]) == 1
        assert os.listdir(http.host.files.root / ".partial") == []
        # an artifact that would pass the quota fails its job with 507, not 500
        r = await http.post(RENDER, json={"text": "x" * 50_000, "repeat": 10})
        assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text[:300]
        assert r.json()["job_id"]
        # freeing space makes room again
        assert (await http.delete(f"/v1/files/{first}")).status_code == 200
        assert (await http.post(RENDER, json={"text": "x" * 50_000, "repeat": 10})).status_code == 200


async def test_2_full_disk_is_507_never_500(echo, monkeypatch):
    import errno

    from kiapi_core.files import ingest

    def full(self, index, length, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ingest.BlockFile, "write_block", full)
    r = await echo.post("/v1/files", files={"file": ("a.bin", os.urandom(3 * MiB), "application/octet-stream")})
    assert r.status_code == 507 and r.json()["code"] == "insufficient_storage", r.text
    assert "disk" in r.json()["detail"]
    assert os.listdir(echo.host.files.root / ".partial") == []


async def test_2_training_requests_are_bounded(kiapi_client_factory):
    kiapi_ernie = pytest.importorskip("kiapi_ernie")
    from tests.test_hostile_input import GOOD, make_zip

    async with kiapi_client_factory(plugins=[kiapi_ernie]) as http:
        dataset = {"type": "file_id", "file_id": await http.upload(make_zip(GOOD), "d.zip", "application/zip")}
        r = await http.post("/v1/image/ernie/train", json={"dataset": dataset, "num_epochs": 2_000_000,
                                                           "batch_size": 100_000})
        assert r.status_code == 422, r.text
        assert {e["field"] for e in r.json()["errors"]} == {"num_epochs", "batch_size"}
        r = await http.post("/v1/image/ernie/train", json={"dataset": dataset, "num_epochs": 500,
                                                           "save_frequency": 1})
        assert r.status_code == 422 and r.json()["field"] == "save_frequency", r.text
        assert "500 checkpoints" in r.json()["detail"] and "KIAPI_ERNIE_MAX_CHECKPOINTS" in r.json()["detail"]
        assert (await http.get("/v1/jobs")).json()["data"] == []


# --- 4. unbounded texts and warnings ---------------------------------------------------------------

async def test_4_long_texts_and_many_unknown_fields_are_bounded(echo):
    r = await echo.post(RENDER, json={"text": "x" * 100_001})
    assert r.status_code == 422 and "KIAPI_MAX_TEXT_CHARS" in r.json()["detail"] and r.json()["field"] == "text"
    r = await echo.post(RENDER, json={"text": "a", "extra": {"deep": "y" * 200_000}})
    assert r.status_code == 422 and r.json()["field"] == "extra.deep"
    junk = {f"zz_unknown_{i}_" + "k" * 500: 1 for i in range(5000)}
    r = await echo.post(RENDER, json={"text": "a", "mode": "async", **junk})
    assert r.status_code == 202, r.text[:300]
    job = (await echo.get(f"/v1/jobs/{r.json()['job_id']}")).json()
    assert len(job["warnings"]) == 2 and len(job["warnings"][0]) < 3000, len(job["warnings"][0])
    assert "and 4980 more" in job["warnings"][0]
    assert len((await echo.get("/v1/jobs")).content) < 20_000


# --- 5. misspelt fields ----------------------------------------------------------------------------

@pytest.mark.parametrize("field,meant", [("txet", "text"), ("Text", "text"), ("repaet", "repeat"),
                                         ("modle", "model"), ("imgae", "image")])
async def test_5_a_near_miss_of_a_declared_field_is_422(echo, field, meant):
    r = await echo.post(RENDER, json={"text": "a", field: 2} if field != "Text" else {"text": "a", "Text": "b"})
    assert r.status_code == 422, r.text
    assert f"did you mean `{meant}`?" in r.json()["detail"] and r.json()["field"] == field


async def test_5_unrelated_extra_fields_are_accepted_with_a_warning(echo):
    r = await echo.post(RENDER, json={"text": "a", "user": "me", "metadata": {"k": 1}})
    assert r.status_code == 200 and "metadata, user" in r.headers["x-kiapi-warnings"]


async def test_5_unknown_fields_setting(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], unknown_fields="reject") as http:
        r = await http.post(RENDER, json={"text": "a", "user": "me"})
        assert r.status_code == 422 and "unknown field `user`" in r.json()["detail"]
    async with kiapi_client_factory(plugins=[kiapi_echo], unknown_fields="warn") as http:
        r = await http.post(RENDER, json={"text": "a", "txet": "b"})
        assert r.status_code == 200 and "txet (did you mean text?)" in r.headers["x-kiapi-warnings"]


async def test_5_ernie_widht_is_422_did_you_mean_width(kiapi_client_factory):
    kiapi_ernie = pytest.importorskip("kiapi_ernie")
    async with kiapi_client_factory(plugins=[kiapi_ernie]) as http:
        for typo, meant in (("widht", "width"), ("stpes", "steps"), ("negative_promt", "negative_prompt")):
            r = await http.post("/v1/image/ernie/generate", json={"prompt": "a", typo: 64, "height": 64})
            assert r.status_code == 422 and f"did you mean `{meant}`?" in r.json()["detail"], r.text


# --- error messages a person can act on --------------------------------------------------------------

async def test_errors_list_every_problem_and_enum_values(kiapi_client_factory):
    kiapi_ernie = pytest.importorskip("kiapi_ernie")
    async with kiapi_client_factory(plugins=[kiapi_ernie]) as http:
        r = await http.post("/v1/image/ernie/generate", json={
            "prompt": "a", "steps": 0, "width": 5, "height": 7, "guidance": -1, "mode": "asnyc"})
        assert r.status_code == 422, r.text
        body = r.json()
        assert {e["field"] for e in body["errors"]} == {"steps", "width", "height", "guidance", "mode"}
        assert "valid values: sync, async" in body["detail"]
        assert "steps must be an int >= 1 (got 0)" in body["detail"]
        r = await http.post("/v1/image/ernie/generate", json={"prompt": "a", "model": "nope"})
        assert r.status_code == 400 and "turbo, base" in r.json()["detail"]  # the contract says 400


async def test_errors_name_valid_values_of_unions_and_literals(echo):
    r = await echo.post(RENDER, json={"text": "a", "image": {"type": "nope"}})
    assert r.status_code == 422 and "valid values: file_id, url, data_url" in r.json()["detail"]
    r = await echo.post(RENDER, json={"text": "a", "image": {"file_id": "x"}})
    assert "image.type is required (one of: file_id, url, data_url)" in r.json()["detail"]
    r = await echo.post(RENDER, json={"repeat": "x", "mode": 1})
    assert {e["detail"] for e in r.json()["errors"]} == {
        "text is required", "mode must be one of: sync, async (got 1)", 'repeat must be an int (got "x")'}
    r = await echo.request("PATCH", "/v1/jobs")
    assert r.status_code == 405 and r.json()["allowed"] == ["GET", "HEAD"]


# --- 8. strict numbers in the Files API --------------------------------------------------------------

@pytest.mark.parametrize("limit", ["²", "٣", "1" * 5000, "-1", "1e3", " 5"])
async def test_8_odd_limits_are_422(echo, limit):
    r = await echo.get("/v1/files", params={"limit": limit})
    assert r.status_code == 422 and r.json()["field"] == "limit"


@pytest.mark.parametrize("header", ["bytes=²-", "bytes=0-²", "bytes=" + "9" * 5000 + "-", "bytes=-" + "9" * 5000,
                                    "bytes=¹-³"])
async def test_8_odd_ranges_are_ignored_not_500(echo, header):
    file_id = await echo.upload(b"0123456789", "a.txt")
    r = await echo.get(f"/v1/files/{file_id}/download", headers={"Range": header.encode("latin-1")})
    assert r.status_code == 200 and r.content == b"0123456789"


# --- 13. SSRF refusals name the class, not the address ------------------------------------------------

async def test_13_refusals_do_not_reveal_resolved_addresses(echo, monkeypatch):
    from kiapi_core.files.fetch import AddressPolicy, URLFetcher

    async def resolver(host, port):
        return ["10.11.12.13"]

    def from_settings(cls, settings, **overrides):
        return cls(policy=AddressPolicy(), resolver=resolver, timeout_s=1, max_bytes=1000)

    monkeypatch.setattr(URLFetcher, "from_settings", classmethod(from_settings))
    r = await echo.post(RENDER, json={"text": "a", "image": {"type": "url", "url": "http://intranet.example/x"}})
    assert r.status_code == 400 and r.json()["address_class"] == "private"
    assert "10.11.12.13" not in r.text and "private address" in r.json()["detail"]


# --- 6. input-driven memory ------------------------------------------------------------------------

def _image(size, mode="RGBA", fmt="PNG") -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, (10, 20, 30, 255) if mode == "RGBA" else (10, 20, 30)).save(buffer, format=fmt)
    return buffer.getvalue()


async def test_6_decoded_input_size_counts_in_memory_admission(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], memory_limit_gb=0.1) as http:
        big = await http.upload(_image((4000, 4000)), "big.png", "image/png")  # small file, 16 M pixels
        assert (await http.get(f"/v1/files/{big}")).json()["size"] < 1_000_000
        r = await http.post(RENDER, json={"text": "a", "image": {"type": "file_id", "file_id": big}})
        assert r.status_code == 503 and r.json()["code"] == "memory_budget", r.text
        small = await http.upload(_image((64, 64)), "small.png", "image/png")
        r = await http.post(RENDER, json={"text": "a", "mode": "async",
                                          "image": {"type": "file_id", "file_id": small}})
        assert r.status_code == 202, r.text
        job = await http.wait_job(r.json()["job_id"])
        assert job["params"]["input_gb"] == round(64 * 64 * 16 / 1e9, 4)
        assert job["metrics"]["admitted_gb"] >= job["params"]["input_gb"]


async def test_6_large_bodies_are_processed_a_few_at_a_time(echo):
    from kiapi_core.http.body import LARGE_BODY_SLOTS

    release = asyncio.Event()
    started: list[int] = []

    def body(i: int):
        async def chunks():
            started.append(i)
            yield b'{"text": "a", "mode": "async", "pad": ['
            await release.wait()
            yield b",".join([b'"' + b"x" * 50_000 + b'"'] * 21) + b"]}"  # over LARGE_BODY_BYTES
        return chunks()

    posts = [asyncio.ensure_future(echo.post(RENDER, content=body(i), headers={"content-type": "application/json"}))
             for i in range(LARGE_BODY_SLOTS + 3)]
    for _ in range(100):
        await asyncio.sleep(0.02)
        if len(started) >= LARGE_BODY_SLOTS:
            break
    await asyncio.sleep(0.2)
    assert len(started) == LARGE_BODY_SLOTS, started  # the others wait before their body is read
    release.set()
    responses = await asyncio.gather(*posts)
    assert all(r.status_code == 202 for r in responses), [r.text[:200] for r in responses]
    assert len(started) == LARGE_BODY_SLOTS + 3


# --- 15. image formats -----------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,mode", [("GIF", "RGB"), ("BMP", "RGB"), ("TIFF", "RGB")])
async def test_15_only_png_jpeg_webp_inputs_as_documented(echo, fmt, mode):
    file_id = await echo.upload(_image((32, 32), mode, fmt), f"a.{fmt.lower()}", f"image/{fmt.lower()}")
    r = await echo.post(RENDER, json={"text": "a", "image": {"type": "file_id", "file_id": file_id}})
    assert r.status_code == 400 and f"is a {fmt} image; send PNG, JPEG or WebP" in r.json()["detail"]
    for ok_fmt in ("PNG", "JPEG", "WEBP"):
        ok = await echo.upload(_image((32, 32), "RGB", ok_fmt), "ok", "image/png")
        r = await echo.post(RENDER, json={"text": "a", "image": {"type": "file_id", "file_id": ok}})
        assert r.status_code == 200, (ok_fmt, r.text)


# --- 10. work directories left by a crash --------------------------------------------------------------

async def test_10_work_dirs_of_crashed_jobs_are_swept_at_start(kiapi_host_factory):
    from kiapi_core.testing import client

    host = kiapi_host_factory(plugins=[kiapi_echo])
    left = host.settings.data_path / "work" / "job_cut_off_by_kill_9"
    (left / "checkpoints").mkdir(parents=True)
    (left / "checkpoints" / "0000100_checkpoint.zip").write_bytes(os.urandom(100_000))
    async with client(host) as http:
        assert not left.exists()
        r = await http.post(RENDER, json={"text": "a"})  # jobs still get their own work dirs
        assert r.status_code == 200
