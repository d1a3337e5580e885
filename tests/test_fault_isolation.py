"""A handler that blows up fails its own job, nothing else: the worker thread and the server go
on, and every memory reservation and one-off model is released."""

from __future__ import annotations

import msgspec
import pytest

import kiapi_echo
from kiapi_core import Capability, Model, Operation, hookimpl

LOADS: list[int | None] = []


class Runtime:
    def __init__(self, quantize: int | None) -> None:
        self.quantize = quantize
        self.closed = False

    def close(self) -> None:
        self.closed = True


def load(*, model, quantize, settings, demo, cache_dir, **options) -> Runtime:
    if options.get("broken"):
        raise RuntimeError("[load] the weights are corrupt")
    LOADS.append(quantize)
    return Runtime(quantize)


class ExplodeRequest(msgspec.Struct, kw_only=True):
    how: str = "mlx"
    quantize: int | None = None
    model: str | None = None
    mode: str = "sync"


def explode(job) -> None:
    how = job.request.how
    if how == "broken-load":
        job.runtime(broken=True)
    options = {} if job.request.quantize is None else {"quantize": job.request.quantize}
    job.runtime(**options)
    job.progress(0.5, "denoising")
    if how == "mlx":  # what MLX raises when a buffer does not fit
        raise RuntimeError("[metal::malloc] Attempting to allocate 99999999999 bytes which is greater than "
                           "the maximum allowed buffer size of 28991029248 bytes.")
    if how == "memory":
        raise MemoryError()
    if how == "exit":
        raise SystemExit(3)
    raise ValueError(how)


class FaultyPlugin:
    """A test-only capability whose model loads (resident or one-off) and whose handler raises."""

    @hookimpl
    def register_capabilities(self, register):
        register(Capability(
            name="faulty", domain="text", title="Faulty (test)",
            models=(Model(name="m", default=True, loader=load, resident_quantize=8,  # type: ignore[arg-type]
                          weights_gib={8: 0.5, 4: 0.3}),),
            operations=(Operation(name="explode", request=ExplodeRequest, result=None, handler=explode,
                                  job_type="faulty", estimate=lambda params, model: 0.25),),
        ))


@pytest.fixture
async def client(kiapi_client_factory):
    LOADS.clear()
    async with kiapi_client_factory(plugins=[kiapi_echo, FaultyPlugin()], memory_limit_gb=4.0) as http:
        yield http


async def _memory(http) -> dict:
    return (await http.get("/v1/memory")).json()


@pytest.mark.parametrize("body,fragment", [
    ({"how": "mlx"}, "RuntimeError: [metal::malloc] Attempting to allocate"),
    ({"how": "mlx", "quantize": 4}, "metal::malloc"),      # a one-off (transient) model
    ({"how": "memory"}, "MemoryError"),
    ({"how": "exit"}, "SystemExit: 3"),
    ({"how": "broken-load"}, "the weights are corrupt"),
    ({"how": "plain"}, "ValueError: plain"),
])
async def test_handler_errors_fail_the_job_and_nothing_else(client, body, fragment):
    r = await client.post("/v1/text/faulty/explode", json=body)
    assert r.status_code == 500, r.text
    error = r.json()
    assert error["code"] == "internal_error" and fragment in error["detail"] and error["job_id"]
    job = (await client.get(f"/v1/jobs/{error['job_id']}")).json()
    assert job["status"] == "failed" and job["error_code"] == "internal_error" and fragment in job["error"]

    # Reservations and one-off models are gone; only the resident model (if it loaded) stays.
    memory = await _memory(client)
    assert memory["reservations"] == [] and memory["running"] is None and memory["reserved_gb"] == 0
    assert [r["quantize"] for r in memory["resident"]] == ([8] if 8 in LOADS else [])
    assert client.host.models.stats()["reservations"] == []

    # The worker and the server carry on.
    health = (await client.get("/health")).json()
    assert health["queue"]["worker_alive"] is True and health["queue"]["running"] is None
    ok = await client.post("/v1/text/echo/render", json={"text": "still here"})
    assert ok.status_code == 200 and ok.content == b"still here"


async def test_many_failures_in_a_row_leave_the_budget_whole(client):
    for _ in range(5):
        assert (await client.post("/v1/text/faulty/explode", json={"how": "mlx", "quantize": 4})).status_code == 500
    memory = await _memory(client)
    assert memory["reservations"] == [] and memory["reserved_gb"] == 0
    assert sum(r["gb"] for r in memory["resident"]) == pytest.approx(memory["resident_gb"])
    totals = (await client.get("/health")).json()["queue"]["totals"]
    assert totals["failed"] == 5 and totals["submitted"] == 5
