"""End to end through the host's HTTP app in demo mode (the issue's "done when" list)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

import kiapi_seedvr2

pytestmark = pytest.mark.slow
URL = "/v1/image/seedvr2/upscale"


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_demo_upscale_over_http(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_seedvr2]) as http:
        image = {"type": "file_id", "file_id": await http.upload(_png(16, 16), "in.png", "image/png")}

        raw = await http.post(URL, json={"image": image, "resolution": "2x"})
        assert raw.status_code == 200, raw.text
        assert raw.headers["content-type"] == "image/png" and raw.headers["x-kiapi-file-id"]
        assert Image.open(io.BytesIO(raw.content)).size == (32, 32)

        job = (await http.post(URL, json={"image": image, "resolution": 24, "model": "seedvr2-7b"},
                               headers={"accept": "application/json"})).json()
        assert job["status"] == "succeeded" and job["type"] == "seedvr2" and job["progress_label"] == "done"
        result = job["result"]
        assert (result["model"], result["width"], result["height"]) == ("7b", 24, 24)
        assert (result["input_width"], result["input_height"]) == (16, 16)
        assert result["params"]["resolution"] == 24 and result["params"]["quantize"] == 8

        for bad in ({"resolution": "5x"}, {"resolution": 4096}, {"resolution": 8}, {"resolution": "big"},
                    {"softness": 1.5}, {"quantize": 7}):
            response = await http.post(URL, json={"image": image, **bad})
            assert response.status_code == 422, (bad, response.text)

        models = (await http.get("/v1/image/seedvr2/models")).json()
        assert [(m["name"], m["default"]) for m in models] == [("3b", True), ("7b", False)]


async def test_missing_weights_answer_503_with_the_activate_command(kiapi_client_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    async with kiapi_client_factory(plugins=[kiapi_seedvr2], demo=False) as http:
        image = {"type": "file_id", "file_id": await http.upload(_png(16, 16), "in.png", "image/png")}
        for model, variant in ((None, "3b"), ("seedvr2-7b", "7b")):
            response = await http.post(URL, json={"image": image, "model": model})
            assert response.status_code == 503, response.text
            assert f"kiapi activate seedvr2:{variant}" in response.json()["detail"]
