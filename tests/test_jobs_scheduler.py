"""The model-aware queue: jobs for a loaded model go first, within the fairness bound."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import kiapi_twomodels
import pytest

from kiapi_core.jobs import scheduler
from kiapi_core.jobs.scheduler import Fairness


@dataclass(eq=False)
class Job:
    name: str
    model: str
    bypassed: int = 0
    bypassed_since: float | None = None

    @property
    def model_key(self) -> tuple[str, str]:
        return ("pair", self.model)


def alternating(n: int) -> list[Job]:
    return [Job(f"{'ab'[i % 2]}{i}", "ab"[i % 2]) for i in range(n)]


def run_all(queue: list[Job], fairness: Fairness, loaded: str) -> tuple[list[Job], int]:
    """Start every job as the manager would; returns the start order and the loads."""
    order, loads = [], 0
    while queue:
        index = scheduler.pick(queue, lambda job, m=loaded: job.model == m, fairness, now=0.0)
        scheduler.passed_over(queue, index, now=0.0)
        job = queue.pop(index)
        if job.model != loaded:
            loaded, loads = job.model, loads + 1
        order.append(job)
    return order, loads


def test_fifo_when_disabled_or_bound_zero() -> None:
    for fairness in (Fairness(enabled=False), Fairness(max_bypass=0)):
        queue = alternating(6)
        order, loads = run_all(list(queue), fairness, loaded="a")
        assert order == queue and loads == 5


@pytest.mark.parametrize("bound", [1, 2, 4, 8])
def test_alternating_jobs_group_by_model_within_the_bound(bound: int) -> None:
    queue = alternating(20)
    order, loads = run_all(list(queue), Fairness(max_bypass=bound), loaded="a")
    assert loads <= 20 // (bound + 1) + 1
    for job in queue:  # nobody is overtaken more often than the bound allows
        overtaken = sum(1 for other in order[:order.index(job)] if queue.index(other) > queue.index(job))
        assert overtaken <= bound and job.bypassed <= bound


def test_plan_is_the_order_jobs_start_in() -> None:
    queue = alternating(20)
    planned = scheduler.plan(queue, lambda job: job.model == "a", Fairness(max_bypass=4), now=0.0)
    order, _ = run_all(list(queue), Fairness(max_bypass=4), loaded="a")
    assert [j.name for j in planned] == [j.name for j in order]


def test_a_job_held_back_too_long_is_due() -> None:
    queue = alternating(4)
    queue[1].bypassed, queue[1].bypassed_since = 1, 0.0  # a "b" job overtaken once, 61 s ago
    fairness = Fairness(max_bypass=4, max_bypass_s=60.0)
    assert scheduler.pick(queue[1:], lambda job: job.model == "a", fairness, now=61.0) == 0
    assert scheduler.pick(queue[1:], lambda job: job.model == "a", fairness, now=59.0) == 1


async def _alternating_run(client, gate: str, jobs: int) -> tuple[list[dict], list[dict]]:
    """One gated job for model a, then ``jobs`` jobs alternating b, a, b ... behind it."""
    kiapi_twomodels.GATES[gate] = threading.Event()
    first = (await client.post("/v1/test/pair/run", json={"model": "a", "gate": gate})).json()
    while (await client.get(f"/v1/jobs/{first['job_id']}")).json()["status"] != "running":
        pass
    ids = []
    for i in range(jobs):
        r = await client.post("/v1/test/pair/run", json={"model": "ba"[i % 2]})
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    queued = [(await client.get(f"/v1/jobs/{job_id}")).json() for job_id in ids]
    kiapi_twomodels.GATES[gate].set()
    done = [await client.wait_job(job_id) for job_id in ids]
    return queued, done


async def test_alternating_two_models_one_model_budget_over_http(kiapi_client_factory) -> None:
    kiapi_twomodels.LOADS.clear()
    async with kiapi_client_factory(plugins=[kiapi_twomodels], demo=False, memory_limit_gb=10,
                                    queue_max_bypass=4) as client:
        queued, done = await _alternating_run(client, "affinity", 20)
    assert all(job["status"] == "succeeded" for job in done)
    started = sorted(done, key=lambda job: job["started_at"])
    # The positions shown while queued were the order the jobs really started in.
    positions = {job["id"]: job["queue_position"] for job in queued}
    assert [positions[job["id"]] for job in started] == list(range(20))
    loads_per_job = (len(kiapi_twomodels.LOADS) - 1) / 20  # the first load is the gated job's
    assert loads_per_job <= 0.3, kiapi_twomodels.LOADS
    submitted = [job["id"] for job in queued]
    for index, job_id in enumerate(submitted):  # the fairness bound holds
        position = [job["id"] for job in started].index(job_id)
        overtaken_by = sum(1 for other in started[:position] if submitted.index(other["id"]) > index)
        assert overtaken_by <= 4


async def test_strict_fifo_setting_loads_per_job(kiapi_client_factory) -> None:
    kiapi_twomodels.LOADS.clear()
    async with kiapi_client_factory(plugins=[kiapi_twomodels], demo=False, memory_limit_gb=10,
                                    queue_model_affinity=False) as client:
        queued, done = await _alternating_run(client, "fifo", 6)
    assert [job["queue_position"] for job in queued] == list(range(6))
    assert [job["id"] for job in sorted(done, key=lambda job: job["started_at"])] == [j["id"] for j in queued]
    assert len(kiapi_twomodels.LOADS) == 7  # one per job
