"""The cluster job manager and runner in-process, on the local backend: a job's way through
claim and finish, the submit-time memory check against the largest live host, and the lease
watchdog that stops a run while the database hangs."""

from __future__ import annotations

import asyncio
import threading
import time

import msgspec
import pytest

import kiapi_echo
from kiapi_core.cluster.interfaces import HostState
from kiapi_core.cluster.local import LocalEventBus, LocalJobBackend
from kiapi_core.cluster.manager import ClusterJobManager
from kiapi_core.errors import Unavailable
from kiapi_core.host import build_host
from kiapi_core.jobs.models import JobStatus
from kiapi_core.jobs.services import JobServices
from kiapi_core.settings import Settings


class HangingRenewals(LocalJobBackend):
    """Renewals block (a database that stopped answering) once ``hang`` is set."""

    def __init__(self, bus) -> None:
        super().__init__(bus)
        self.hang = threading.Event()
        self.unblock = threading.Event()

    def renew(self, job_id, owner, attempt, lease_s):
        if self.hang.is_set():
            self.unblock.wait(30)
        return super().renew(job_id, owner, attempt, lease_s)


@pytest.fixture
async def rig(tmp_path):
    host = build_host(Settings(data_dir=str(tmp_path), demo=True, load_plugins=[]), plugins=[kiapi_echo],
                      load_entrypoints=False)
    settings = msgspec.structs.replace(host.settings, cluster_lease_s=0.6, cluster_host_id="here",
                                       affinity_wait_s=0.0)
    bus = LocalEventBus()
    backend = HangingRenewals(bus)
    services = JobServices(files=host.files, models=host.models, plugin_settings=host.plugin_settings,
                           cache_dir=host.cache_dir, work_root=tmp_path / "work", demo=True)
    manager = ClusterJobManager(settings=settings, backend=backend, bus=bus, registry=host.registry,
                                services=services)
    await manager.start()
    yield host, manager, backend
    backend.unblock.set()
    kiapi_echo.GATES.clear()
    await manager.stop(grace_s=0)


def _submit(host, manager, op="slow", **fields):
    capability = host.registry.get("echo")
    operation = next(o for o in capability.operations if o.name == op)
    model = host.registry.resolve_model("echo", None)
    request = msgspec.convert({"mode": "async", **fields}, operation.request)
    return manager.submit(capability=capability, operation=operation, model=model, request=request,
                          params={"steps": fields.get("steps", 2)}, inputs={}, input_ids={}, warnings=[],
                          estimate_gb=0.0)


async def test_a_job_runs_through_claim_and_finish(rig):
    host, manager, backend = rig
    job = _submit(host, manager, steps=3)
    done = await manager.wait(job.id, 10)
    assert done.status is JobStatus.succeeded and done.result == {"steps": 3}
    assert done.metrics["cluster_host"] == "here" and done.metrics["attempt"] == 1
    assert [h.id for h in await manager.ahosts()] == ["here"]


async def test_submit_checks_the_largest_live_host_serving_the_capability(rig):
    host, manager, backend = rig
    capability = host.registry.get("echo")
    backend.heartbeat(HostState(id="big", capabilities=["echo"], budget_gb=64.0))
    backend.heartbeat(HostState(id="other", capabilities=["elsewhere"], budget_gb=512.0))
    await asyncio.to_thread(manager.runner.pulse_once)
    manager._check_fits(capability, 60.0)  # fits "big", though not this host
    with pytest.raises(Unavailable) as refused:
        manager._check_fits(capability, 100.0)
    assert refused.value.code == "memory_budget" and "64.0 GiB" in refused.value.detail
    nobody = msgspec.structs.replace(capability, name="nobody")
    with pytest.raises(Unavailable) as none:
        manager._check_fits(nobody, 1.0)
    assert none.value.code == "no_host"


async def test_the_watchdog_stops_the_run_while_the_database_hangs(rig):
    host, manager, backend = rig
    kiapi_echo.GATES["never"] = threading.Event()
    job = _submit(host, manager, steps=5, gate="never")
    deadline = time.monotonic() + 10
    while manager.runner.run is None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    backend.hang.set()
    hung_at = time.monotonic()
    while manager.runner.run is not None:
        assert time.monotonic() - hung_at < 0.6 * 2 + 2.0, "the run was not stopped within the lease"
        await asyncio.sleep(0.02)
    # The record was not written by the stopped run: the reaper decides (after the lease).
    assert backend.get(job.id).status is JobStatus.running


def test_placement_labels_say_why_a_queued_job_waits():
    from kiapi_core.cluster.interfaces import QueuedNeed
    from kiapi_core.cluster.placement import waiting_label

    def need(label="queued", need_gb=3.0, load_gb=4.0, light=False):
        return QueuedNeed("job_1", "cap", "cap:m", need_gb, load_gb, light, label)

    small = HostState(id="s", capabilities=["cap"], budget_gb=5.0)
    warm = HostState(id="w", capabilities=["cap"], resident=["cap:m"], budget_gb=5.0)
    assert waiting_label(need(), [small]).startswith("waiting: it needs about 7.00 GiB and the largest live host")
    assert waiting_label(need(), [warm]) is None  # the model is resident there: 3 GB fits
    assert waiting_label(need(light=True), [small]) is None  # light jobs are not reserved
    assert waiting_label(need(), []).startswith("waiting: no live host serves 'cap' now")
    assert waiting_label(need(), [msgspec.structs.replace(warm, live=False)]).startswith("waiting: no live host")
    assert waiting_label(need("waiting: no live host serves 'cap' now; ..."), [warm]) == "queued"
    refused = "waiting for memory: s cannot free 7.00 GiB now"
    assert waiting_label(need(refused), []) is None  # a refusal's reason stays
