"""``/metrics``: Prometheus text exposition, read back with prometheus_client's own parser."""

from __future__ import annotations

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

import kiapi_echo
from kiapi_core import Capability, Model, Operation, hookimpl


class LoadRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    mode: str = "sync"


def _load_tiny(**_: object) -> dict:
    return {"weights": "tiny"}


def _use_model(job) -> dict:
    return {"runtime": job.runtime()["weights"]}


class Loader:
    @staticmethod
    @hookimpl
    def register_capabilities(register):
        register(Capability(name="loady", domain="text", title="Loady (test)",
                            models=(Model(name="m", default=True, loader=_load_tiny),),
                            operations=(Operation(name="use", request=LoadRequest, result=None,
                                                  handler=_use_model, job_type="loady"),)))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_jobs_http_models_memory_and_storage(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo, Loader]) as http:
        http.host.metrics.storage_cache_s = 0
        assert (await http.post("/v1/text/echo/render", json={"text": "hi"})).status_code == 200
        assert (await http.post("/v1/text/echo/fail", json={"how": "crash"})).status_code == 500
        assert (await http.post("/v1/text/loady/use", json={})).status_code == 200
        await http.upload(b"abc", "a.txt", "text/plain")
        assert (await http.get("/v1/jobs/job_" + "0" * 32)).status_code == 404
        await http.get("/no/such/path")
        before = samples((await http.get("/metrics")).text)
        assert (await http.post("/v1/memory/models/loady/m/unload")).status_code == 200
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    got = samples(response.text)
    jobs = "kiapi_jobs_total"
    assert got[(jobs, (("capability", "echo"), ("operation", "render"), ("status", "succeeded")))] == 1
    assert got[(jobs, (("capability", "echo"), ("operation", "fail"), ("status", "failed")))] == 1
    assert got[("kiapi_jobs_submitted_total", (("capability", "echo"), ("operation", "render")))] == 1
    assert got[("kiapi_job_run_seconds_count", (("capability", "echo"), ("operation", "render")))] == 1
    assert got[("kiapi_job_wait_seconds_count", (("capability", "loady"), ("operation", "use")))] == 1
    assert got[("kiapi_model_loads_total", (("capability", "loady"), ("model", "m")))] == 1
    assert got[("kiapi_model_load_seconds_count", (("capability", "loady"), ("model", "m")))] == 1
    assert got[("kiapi_queue_depth", ())] == 0 and got[("kiapi_jobs_running", ())] == 0
    # /v1/memory counts GiB: the budget in bytes is 2**30 per unit (it was once 10**9).
    assert got[("kiapi_memory_budget_bytes", ())] == pytest.approx(http.host.models.budget.gb * 2**30, rel=1e-3)
    assert got[("kiapi_model_evictions_total", (("capability", "loady"), ("model", "m"), ("reason", "admin")))] == 1
    resident = ("kiapi_model_resident_bytes", (("capability", "loady"), ("model", "m"), ("quantize", "None")))
    assert resident in before and resident not in got  # unloaded by the admin call
    assert got[("kiapi_storage_files", (("kind", "output"),))] == 1  # echo's text file
    assert got[("kiapi_storage_used_bytes", (("kind", "upload"),))] == 3
    http_total = "kiapi_http_requests_total"
    assert got[(http_total, (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")))] == 1
    assert got[(http_total, (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    assert got[(http_total, (("method", "POST"), ("route", "/v1/text/echo/render"), ("status", "200")))] == 1
    assert got[("kiapi_http_request_duration_seconds_count",
                (("method", "POST"), ("route", "/v1/files")))] == 1
    assert got[("kiapi_info", (("demo", "true"), ("version", http.host.version)))] == 1


async def test_two_hosts_keep_their_own_metrics(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as one, kiapi_client_factory(plugins=[kiapi_echo]) as two:
        await one.post("/v1/text/echo/render", json={"text": "x"})
        first = samples((await one.get("/metrics")).text)
        second = samples((await two.get("/metrics")).text)
    key = ("kiapi_jobs_total", (("capability", "echo"), ("operation", "render"), ("status", "succeeded")))
    assert first[key] == 1 and key not in second


async def test_metrics_need_the_token_unless_opened_to_loopback(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo], auth_token="s3cret") as http:
        assert (await http.get("/metrics")).status_code == 401
        ok = await http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and "kiapi_queue_depth" in ok.text
    # httpx's ASGI transport presents the client as 127.0.0.1
    async with kiapi_client_factory(plugins=[kiapi_echo], auth_token="s3cret", metrics_loopback_open=True) as http:
        assert (await http.get("/metrics")).status_code == 200
        assert (await http.get("/v1/jobs")).status_code == 401
