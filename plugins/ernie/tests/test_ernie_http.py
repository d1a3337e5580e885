"""End to end through the host in demo mode (the core's test kit): HTTP -> job -> mflux."""

from __future__ import annotations

import base64

import msgspec
import pytest

import kiapi_ernie
from kiapi_ernie.params import EditParams, GenerateParams, TrainParams

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
        # The record is the plugin's params Struct as JSON: the input as summarised, plus the id
        # it was stored as; the result names the stored file, ready to send back.
        recorded = msgspec.convert(job["params"], EditParams)
        assert recorded.image == {"type": "data_url", "media_type": "image/png", "chars": len(data_url)}
        assert recorded.image_file_id == job["result"]["params"]["image_file_id"]
        assert job["result"]["params"]["image"] == {"type": "file_id", "file_id": recorded.image_file_id}
        assert (recorded.kind, recorded.format, recorded.steps) == ("edit", "webp", 2) and "lora_mb" not in job["params"]

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
        trained = msgspec.convert(done["params"], TrainParams)
        assert trained.dataset_file_id == dataset and trained.targets == done["result"]["lora_targets"]

        r = await http.post("/v1/image/ernie/generate", headers={"accept": "application/json"},
                            json={"prompt": "owl", "width": 64, "height": 64, "steps": 2,
                                  "loras": [{"file": {"type": "file_id", "file_id": adapter}, "scale": 1.0}]})
        assert r.status_code == 200, r.text
        job = r.json()
        lora = msgspec.convert(job["params"], GenerateParams).loras[0]
        assert lora.file_id == adapter and lora.scale == 1.0 and job["params"]["lora_mb"] > 0
        assert job["result"]["params"]["loras"] == [{"file": {"type": "file_id", "file_id": adapter}, "scale": 1.0}]


async def test_review_fixes_over_http(kiapi_client_factory, tmp_path):
    """A LoRA for another shape is a 400 before queueing; turbo with guidance 3 runs and warns;
    demo results say the output is noise once in params and once (from the core) in warnings."""
    import mlx.core as mx

    async with kiapi_client_factory(plugins=[kiapi_ernie]) as http:
        path = tmp_path / "wrong.safetensors"
        mx.save_safetensors(str(path), {"transformer.layers.0.self_attention.to_q.lora_A.weight": mx.zeros((4, 128)),
                                        "transformer.layers.0.self_attention.to_q.lora_B.weight": mx.zeros((64, 4))})
        lora = await http.upload(path.read_bytes(), "wrong.safetensors", "application/octet-stream")
        r = await http.post("/v1/image/ernie/generate",
                            json={"prompt": "owl", "width": 64, "height": 64, "steps": 2,
                                  "loras": [{"file": {"type": "file_id", "file_id": lora}}]})
        assert r.status_code == 400, r.text
        assert "takes 64 inputs" in r.json()["detail"] and r.json()["code"] == "invalid_input"

        r = await http.post("/v1/image/ernie/generate", headers={"accept": "application/json"},
                            json={"prompt": "owl", "width": 64, "height": 64, "steps": 2, "guidance": 3.0})
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["result"]["params"]["guidance"] == 3.0
        assert job["result"]["params"]["note"] == "demo mode: tiny random-weight model, the output is noise"
        assert sum("guidance-distilled" in w for w in job["warnings"]) == 1
        assert sum("noise" in w for w in job["warnings"]) == 1  # the core's one demo warning

        r = await http.post("/v1/image/ernie/generate", json={"prompt": "owl", "width": 5000})
        assert r.status_code == 422 and "exceeds the cap 2048" in r.json()["detail"]
        assert "multiple of 16" not in r.json()["detail"]


async def test_a_16_gb_mac_over_http(kiapi_client_factory, ernie_helpers, tmp_path):
    """Budget 10.67 GB (a 16 GB Mac), real declarations: /v1/memory reports the budget-chosen q5; a default training request is refused before queueing with the set-up that
    would fit. (Weight files are stand-ins: nothing is loaded.)"""
    weights = tmp_path / "turbo"
    for name in ("vae/w.safetensors", "vae/config.json", "transformer/w.safetensors", "transformer/config.json",
                 "text_encoder/w.safetensors", "text_encoder/config.json", "tokenizer/tokenizer.json"):
        (weights / name).parent.mkdir(parents=True, exist_ok=True)
        (weights / name).write_bytes(b"{}")
    async with kiapi_client_factory(plugins=[kiapi_ernie], demo=False, memory_limit_gb=10.67,
                                    plugin_settings={"ernie": {"turbo_path": str(weights)}}) as http:
        memory = (await http.get("/v1/memory")).json()
        assert {"family": "ernie", "model": "turbo", "resident_quantize": 5, "weights_gb": 7.5,
                "chosen_by": "memory budget 10.67 GiB"} in memory["models"]
        listed = {m["name"]: m for m in (await http.get("/v1/image/ernie/models")).json()}
        assert listed["turbo"]["resident_quantize"] == 5
        assert listed["turbo"]["resident_quantize_chosen_by"] == "memory budget 10.67 GiB"
        h = ernie_helpers
        dataset = await http.upload(h.zip({"a.png": h.png((64, 64)), "a.txt": "red"}), "ds.zip", "application/zip")
        r = await http.post("/v1/image/ernie/train", json={"dataset": {"type": "file_id", "file_id": dataset}})
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["code"] == "memory_budget" and body["suggestion"] == {"low_ram": True, "quantize": 5}
        assert "quantize 5 with low_ram: true" in body["hint"] and body["low_ram_gb"] < body["without_low_ram_gb"]
