"""Operations declared ``uses_mlx=False`` run on the light pool: never behind a model job, and
measured by what they actually use (RSS), not by MLX counters that read 0 for them."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Literal

import msgspec

import kiapi_echo
from kiapi_core import Capability, Model, Operation, hookimpl
from kiapi_core.memory.backends import backend_for_model


class QuickRequest(msgspec.Struct, kw_only=True):
    allocate_mb: int = 0
    wait: bool = False
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


class QuickResult(msgspec.Struct, kw_only=True):
    thread: str
    runtime: str


LOADS: list[str] = []


class Resampler:
    def __init__(self, name: str) -> None:
        self.name = name


def load(*, model, quantize, settings, demo, cache_dir, **options) -> Resampler:
    LOADS.append(model.name)
    return Resampler(model.name)


def quick(job) -> QuickResult:
    runtime = job.runtime()
    while job.request.wait:  # until canceled (the server's shutdown cancels it)
        job.progress(0.5, "waiting")
        time.sleep(0.01)
    if job.request.allocate_mb:
        block = bytearray(job.request.allocate_mb * 2**20)
        for i in range(0, len(block), 4096):  # touch every page: RSS counts committed pages
            block[i] = 1
        del block
    return QuickResult(thread=threading.current_thread().name, runtime=runtime.name)


class Quick:
    @hookimpl
    def register_capabilities(self, register):
        register(Capability(
            name="quick", domain="text", title="Quick",
            models=(Model(name="box", default=True, loader=load, weights_gib={None: 0.0}),),
            operations=(Operation(name="go", request=QuickRequest, result=QuickResult, handler=quick,
                                  job_type="quick", uses_mlx=False),)))


async def test_light_jobs_do_not_wait_behind_a_model_job(kiapi_client_factory):
    gate = kiapi_echo.GATES["pool"] = threading.Event()
    try:
        async with kiapi_client_factory(plugins=[kiapi_echo, Quick()], pool_workers=2) as http:
            slow = await http.post("/v1/text/echo/slow", json={"steps": 2, "gate": "pool", "mode": "async"})
            while (await http.get(f"/v1/jobs/{slow.json()['job_id']}")).json()["status"] != "running":
                await asyncio.sleep(0.01)
            started = time.monotonic()
            answers = await asyncio.gather(*(http.post("/v1/text/quick/go", json={}) for _ in range(4)))
            took_s = time.monotonic() - started
            assert (await http.get(f"/v1/jobs/{slow.json()['job_id']}")).json()["status"] == "running"
            stats = (await http.get("/health")).json()["queue"]["pool"]
            gate.set()
            await http.wait_job(slow.json()["job_id"])
    finally:
        kiapi_echo.GATES.pop("pool", None)
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    threads = {r.json()["result"]["thread"] for r in answers}
    assert threads <= {"kiapi-pool-0", "kiapi-pool-1"} and took_s < 5
    assert {r.json()["result"]["runtime"] for r in answers} == {"box"} and LOADS.count("box") == 1
    assert stats["workers"] == 2


async def test_light_jobs_are_measured_by_rss(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[Quick()]) as http:
        done = await http.post("/v1/text/quick/go", json={"allocate_mb": 96})
    metrics = done.json()["metrics"]
    assert metrics["memory_backend"] == "rss" and metrics["pool"] is True
    assert metrics["peak_gb"] >= 0.05, metrics  # 96 MiB touched; MLX counters would say 0


def test_backend_is_chosen_per_operation():
    model = Model(name="m")
    light = Operation(name="a", request=QuickRequest, result=None, handler=quick, job_type="a", uses_mlx=False)
    assert backend_for_model(model, light).name == "rss"
    forced = msgspec.structs.replace(light, memory_backend="mlx")
    assert backend_for_model(model, forced).name == "mlx"
    assert backend_for_model(Model(name="m", info={"memory_backend": "rss"}), None).name == "rss"


async def test_shutdown_cancels_a_running_pool_job_and_answers_it(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[Quick()]) as http:
        started = await http.post("/v1/text/quick/go", json={"wait": True, "mode": "async"})
        job_id = started.json()["job_id"]
        while (await http.get(f"/v1/jobs/{job_id}")).json()["progress_label"] != "waiting":
            await asyncio.sleep(0.01)
        manager = http.host.jobs
    job = manager.get(job_id)  # the lifespan has stopped the host
    assert job.status == "canceled" and job.error_code == "shutting_down", job
