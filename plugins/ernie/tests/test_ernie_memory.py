"""Memory accounting with the real (tiny) ERNIE models: measured peaks on jobs, eviction
between two variants under a budget that holds one, and refusal without eviction."""

from __future__ import annotations

import pytest

BODY = {"prompt": "an owl", "width": 64, "height": 64, "steps": 1, "seed": 3}
JSON = {"Accept": "application/json"}


async def _generate(http, model: str) -> dict:
    r = await http.post("/v1/image/ernie/generate", json={**BODY, "model": model}, headers=JSON)
    assert r.status_code == 200, r.text
    return r.json()


async def test_jobs_carry_measured_mlx_peaks(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_ernie"]) as http:
        first = await _generate(http, "turbo")
        again = await _generate(http, "turbo")
        memory = (await http.get("/v1/memory")).json()
    metrics = first["metrics"]
    assert metrics["memory_backend"] == "mlx"
    assert metrics["peak_gb"] > 0 and metrics["load_gb"] > 0  # the tiny model is ~8 MB at q8
    assert again["metrics"]["load_gb"] == 0  # resident: nothing loaded the second time
    assert [r["model"] for r in memory["resident"]] == ["turbo"]
    assert memory["resident"][0]["measured_gb"] > 0


async def test_two_variants_under_a_budget_for_one_evict_and_reload(kiapi_client_factory):
    # Demo numbers: 0.02 GiB declared weights + a 0.053 GiB generate estimate = 0.073 GiB per job;
    # one resident model plus a job for the other (0.093 GiB) does not fit 0.08 GiB.
    async with kiapi_client_factory(plugins=["kiapi_ernie"], memory_limit_gb=0.08) as http:
        loads = []
        for model in ("turbo", "base", "turbo", "base"):
            job = await _generate(http, model)
            loads.append(job["metrics"]["load_gb"] > 0)
            memory = (await http.get("/v1/memory")).json()
            assert [r["model"] for r in memory["resident"]] == [model]
            assert memory["accounted_high_water_gb"] <= memory["budget_gb"]
    assert loads == [True, True, True, True]  # every switch evicted the other and reloaded


async def test_a_request_that_can_never_fit_is_refused_without_evicting(kiapi_client_factory):
    async with kiapi_client_factory(plugins=["kiapi_ernie"], memory_limit_gb=0.08) as http:
        await _generate(http, "turbo")
        for mode in ("sync", "async"):
            r = await http.post("/v1/image/ernie/generate",
                                json={**BODY, "width": 2048, "height": 2048, "mode": mode})
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["code"] == "memory_budget" and body["needed_gb"] > body["budget_gb"]
            assert {"resident_gb", "freeable_gb", "hint"} <= set(body)
        memory = (await http.get("/v1/memory")).json()
        assert [r["model"] for r in memory["resident"]] == ["turbo"]  # nothing was evicted
        assert (await http.get("/v1/jobs")).json()["data"][0]["status"] == "succeeded"  # no job for the 503s


@pytest.mark.parametrize("budget", [100.0])
async def test_health_shows_budget_and_resident_model(kiapi_client_factory, budget):
    async with kiapi_client_factory(plugins=["kiapi_ernie"], memory_limit_gb=budget) as http:
        await _generate(http, "turbo")
        health = (await http.get("/health")).json()
    assert health["memory"]["budget_gb"] == budget
    assert [r["model"] for r in health["memory"]["resident"]] == ["turbo"]
