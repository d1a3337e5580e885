"""End to end through the host in demo mode (the core's test kit): HTTP -> job -> mflux."""

from __future__ import annotations

import base64

import pytest

import kiapi_ernie

pytestmark = pytest.mark.slow


async def test_generate_edit_train_apply_over_http(kiapi_client_factory, ernie_helpers):
    h = ernie_helpers
    async with kiapi_client_factory(plugins=[kiapi_ernie]) as http:
        models = (await http.get("/v1/image/ernie/models")).json()
        assert [m["name"] for m in (models["data"] if isinstance(models, dict) else models)] == ["turbo", "base"]

        r = await http.post("/v1/image/ernie/generate", json={"prompt": "owl", "width": 64, "height": 64, "steps": 2})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"

        bad = await http.post("/v1/image/ernie/generate", json={"prompt": "owl", "width": 100, "steps": 500})
        assert bad.status_code == 422 and "multiple of 16" in bad.json()["detail"]

        data_url = "data:image/png;base64," + base64.b64encode(h.png((64, 64))).decode()
        r = await http.post("/v1/image/ernie/edit", headers={"accept": "application/json"},
                            json={"prompt": "autumn", "image": {"type": "data_url", "data_url": data_url},
                                  "width": 64, "height": 64, "steps": 2, "format": "webp"})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["status"] == "succeeded" and job["result"]["params"]["image_file_id"]
        assert "base64" not in str(job["params"]) and "base64" not in str(job["result"])

        zip_bytes = h.zip({"a.png": h.png((64, 64), (200, 0, 0)), "a.txt": "red", "b.png": h.png(), "b.txt": "b"})
        dataset = await http.upload(zip_bytes, "ds.zip", "application/zip")
        bad_zip = await http.upload(h.zip({"a.png": h.png()}), "bad.zip", "application/zip")
        r = await http.post("/v1/image/ernie/train", json={"dataset": {"type": "file_id", "file_id": bad_zip}})
        assert r.status_code == 400 and "a.txt" in r.json()["detail"]
        r = await http.post("/v1/image/ernie/train", json={"dataset": {"type": "file_id", "file_id": dataset},
                                                           "num_epochs": 1, "lora_rank": 4, "max_resolution": 64})
        assert r.status_code == 202, r.text
        done = await http.wait_job(r.json()["job_id"])
        assert done["status"] == "succeeded", (done["error"], done.get("error_code"))
        adapter = done["result"]["adapter_file_id"]
        assert done["artifacts"][-1] == adapter and done["metrics"]["step"] == 2

        r = await http.post("/v1/image/ernie/generate",
                            json={"prompt": "owl", "width": 64, "height": 64, "steps": 2,
                                  "loras": [{"file": {"type": "file_id", "file_id": adapter}, "scale": 1.0}]})
        assert r.status_code == 200, r.text
