"""The one weights-present check, through HTTP: a request, a warm-up, ``/health`` and the model
list all agree on whether a model's weights are on disk (``kiapi_core.weights.presence``)."""

from __future__ import annotations

from helpers_weights import FLAT_FILES, FLAT_REPO, FLAT_REV, TOY_FILES, TOY_REPO, TOY_REV, ToyPlugin, build_snapshot


async def _readiness(http) -> tuple[dict[str, bool], dict[str, bool]]:
    health = (await http.get("/health")).json()
    [toy] = [c for c in health["capabilities"] if c["name"] == "toy"]
    listed = (await http.get("/v1/image/toy/models")).json()
    return {m["name"]: m["ready"] for m in toy["models"]}, {m["name"]: m["ready"] for m in listed}


async def test_missing_weights_are_one_503_everywhere_until_they_are_on_disk(kiapi_client_factory, hf_cache):
    async with kiapi_client_factory(plugins=[ToyPlugin()], demo=False) as http:
        assert await _readiness(http) == ({"small": False, "a": False, "b": False},) * 2
        refused = await http.post("/v1/image/toy/run", json={"text": "hi", "model": "small"})
        assert refused.status_code == 503 and refused.json()["code"] == "weights_missing"
        assert "kiapi activate toy:small" in refused.json()["detail"]
        warm = await http.post("/v1/memory/models/toy/small/load")
        assert warm.status_code == 503 and warm.json()["code"] == "weights_missing"
        assert (await http.get("/v1/jobs")).json()["data"] == []  # nothing was queued

        build_snapshot(hf_cache, TOY_REPO, TOY_REV, TOY_FILES)
        build_snapshot(hf_cache, FLAT_REPO, FLAT_REV, {"a.safetensors": FLAT_FILES["a.safetensors"]})
        # "a" also needs the shared file: partial, so still refused.
        assert await _readiness(http) == ({"small": True, "a": False, "b": False},) * 2
        served = await http.post("/v1/image/toy/run", json={"text": "hi", "model": "toy-small"})
        assert served.status_code == 200, served.text
        partial = await http.post("/v1/image/toy/run", json={"text": "hi", "model": "a"})
        assert partial.status_code == 503 and "shared.safetensors" in partial.json()["detail"]


async def test_demo_mode_never_reads_the_disk_for_readiness(kiapi_client_factory, hf_cache):
    async with kiapi_client_factory(plugins=[ToyPlugin()], demo=True) as http:
        assert await _readiness(http) == ({"small": True, "a": True, "b": True},) * 2
        assert (await http.post("/v1/image/toy/run", json={"text": "hi"})).status_code == 200
