"""Storage that stays bounded: retention shared by jobs and outputs, usage, bulk delete, prune,
and the parameters embedded in image outputs."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

import kiapi_echo
from kiapi_core.files.store import FileStore
from kiapi_core.testing import build_test_host, client


def png_bytes(size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_png_output_carries_params_and_record_keeps_job(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        image = await http.upload(png_bytes(), "in.png", "image/png")
        r = await http.post("/v1/text/echo/render", json={"text": "a red square", "repeat": 2,
                                                          "image": {"type": "file_id", "file_id": image}})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        job_id = r.headers["x-kiapi-job-id"]
        record = (await http.get(f"/v1/files/{r.headers['x-kiapi-file-id']}")).json()
    with Image.open(io.BytesIO(r.content)) as img:
        img.load()
        embedded = json.loads(img.text["kiapi"])
        assert img.size == (8, 8) and img.getpixel((0, 0)) == (200, 10, 10)
    assert embedded["params"]["text"] == "a red squarea red square" and embedded["params"]["model"] == "small"
    assert embedded["capability"] == "echo" and embedded["operation"] == "render"
    assert embedded["model"] == "small" and "job_id" not in embedded  # same seed, same bytes
    assert record["meta"]["job_id"] == job_id and record["meta"]["params"] == embedded["params"]


def test_jpeg_output_carries_params_as_comment():
    from kiapi_core.files.embed import embed_metadata

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    data = embed_metadata(buffer.getvalue(), "image/jpeg", {"params": {"seed": 7}})
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert json.loads(img.info["comment"]) == {"params": {"seed": 7}}


@pytest.mark.parametrize(("mode", "lossless"), [("RGB", False), ("RGBA", False), ("RGB", True), ("RGBA", True)])
def test_webp_output_carries_params_as_xmp(mode, lossless):
    import xml.etree.ElementTree as ET

    from kiapi_core.files.embed import XMP_NS, embed_metadata

    buffer = io.BytesIO()
    Image.new(mode, (33, 17), (1, 2, 3, 4)[: len(mode)]).save(buffer, format="WEBP", lossless=lossless)
    made = {"params": {"prompt": 'a <b> & "c" ü', "seed": 7}}
    data = embed_metadata(buffer.getvalue(), "image/webp", made)
    with Image.open(io.BytesIO(buffer.getvalue())) as plain, Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.size == plain.size and img.mode == plain.mode and img.tobytes() == plain.tobytes()
        xmp = img.info["xmp"]
    element = ET.fromstring(xmp if isinstance(xmp, str) else xmp.decode()).find(f".//{{{XMP_NS}}}made")
    assert element is not None and json.loads(element.text or "") == made


async def test_outputs_share_the_job_policy_and_never_expire_before_their_job(tmp_path):
    host = build_test_host(tmp_path / "data", plugins=[kiapi_echo], job_ttl_s=3600)
    async with client(host) as http:
        r = await http.post("/v1/text/echo/render", json={"text": "x"})
        record = (await http.get(f"/v1/files/{r.headers['x-kiapi-file-id']}")).json()
        assert record["expires_at"] is not None
        assert abs(record["expires_at"] - record["created_at"] - 3600) < 1
        upload = await http.upload(b"u", "u.txt")
        assert (await http.get(f"/v1/files/{upload}")).json()["expires_at"] is None  # KIAPI_FILE_TTL_S=0
        # Long past the output's own expiry, the file lives on while its job record is kept.
        later = time.time() + 7200
        assert host.files.sweep_expired(now=later) == 0
        assert host.files.exists(record["file_id"])
        host.jobs.delete(r.headers["x-kiapi-job-id"])
        assert host.files.sweep_expired(now=later) == 1
        assert not host.files.exists(record["file_id"])


async def test_a_retention_change_applies_to_files_stored_before(tmp_path):
    data = tmp_path / "data"
    async with client(build_test_host(data, plugins=[kiapi_echo])) as http:
        kept = await http.upload(b"old upload", "old.txt")
        assert (await http.get(f"/v1/files/{kept}")).json()["expires_at"] is None
    time.sleep(1.1)
    host = build_test_host(data, plugins=[kiapi_echo], file_ttl_s=1)
    async with client(host) as http:
        assert (await http.get(f"/v1/files/{kept}")).status_code == 404  # expired under the new policy
        host.files.sweep_expired()  # the start-up sweep (in a thread) may be first: give it a moment
        for _ in range(100):
            if not list(host.files.root.glob(f"{kept}*")):
                break
            time.sleep(0.02)
        assert list(host.files.root.glob(f"{kept}*")) == []
        fresh = await http.upload(b"new", "new.txt")
        assert (await http.get(f"/v1/files/{fresh}")).status_code == 200


def test_a_per_file_ttl_stays_fixed(tmp_path):
    store = FileStore(tmp_path / "f", ttl_s=0)
    fixed = store.put_bytes(b"k", filename="k.txt", ttl_s=60)
    later = FileStore(tmp_path / "f", ttl_s=1)
    assert later.get(fixed.file_id).record.expires_at == fixed.record.expires_at


async def test_usage_bulk_delete_and_prune(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        uploads = [await http.upload(b"x" * 100, f"u{i}.txt") for i in range(3)]
        ok = await http.post("/v1/text/echo/render", json={"text": "y" * 50})
        output = ok.headers["x-kiapi-file-id"]
        failed = (await http.post("/v1/text/echo/fail", json={"how": "crash", "mode": "async"})).json()["job_id"]
        await http.wait_job(failed)
        usage = (await http.get("/v1/files/usage")).json()
        assert usage["kinds"]["upload"] == {"files": 3, "bytes": 300}
        assert usage["kinds"]["output"] == {"files": 1, "bytes": 50}
        assert usage["files"] == 4 and usage["bytes"] == 350
        assert usage["retention"]["output_ttl_s"] == 604800

        # size target: the oldest files go first until the total fits; dry run deletes nothing
        dry = (await http.post("/v1/files/prune", json={"max_total_bytes": 200, "dry_run": True})).json()
        assert dry["deleted"] == uploads[:2] and dry["deleted_bytes"] == 200 and dry["remaining_bytes"] == 150
        assert (await http.get("/v1/files/usage")).json()["files"] == 4
        # by kind and age: outputs older than an hour: none
        none = (await http.post("/v1/files/prune", json={"older_than_s": 3600, "kinds": ["output"]})).json()
        assert none["deleted"] == []
        # by status: the failed job's record goes (it made no files)
        gone = (await http.post("/v1/files/prune", json={"job_status": ["failed"]})).json()
        assert gone["jobs_deleted"] == [failed] and gone["deleted"] == []
        assert (await http.get(f"/v1/jobs/{failed}")).status_code == 404
        bad = await http.post("/v1/files/prune", json={})
        assert bad.status_code == 422 and "at least one" in bad.json()["detail"]

        r = await http.request("DELETE", "/v1/files", json={"file_ids": [uploads[0], output, "file_" + "0" * 32]})
        assert r.status_code == 200
        assert r.json() == {"deleted": [uploads[0], output], "not_found": ["file_" + "0" * 32]}
        assert (await http.get(f"/v1/files/{output}")).status_code == 404
        bad = await http.request("DELETE", "/v1/files", json={"file_ids": ["../etc/passwd"]})
        assert bad.status_code == 422
        left = (await http.get("/v1/files/usage")).json()
        assert left["files"] == 2 and left["bytes"] == 200
