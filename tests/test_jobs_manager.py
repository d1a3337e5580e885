"""JobManager: queue, worker, context, cancel, watch, retention and graceful stop."""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from helpers_jobs import BROKEN, LAZY, OTHER, WAIT, Rig, make_rig
from kiapi_core.errors import InvalidRequest, NotFound, QueueFull, Unavailable
from kiapi_core.jobs import manager as manager_module
from kiapi_core.jobs.models import Job, JobStatus
from kiapi_core.jobs.running import PROGRESS_CAP
from kiapi_core.jobs.store import MemoryJobStore
from kiapi_core.jobs.watch import change_key


@pytest.fixture
async def rigs(tmp_path):
    made: list[Rig] = []

    async def make(**settings) -> Rig:
        rig = make_rig(tmp_path / f"rig{len(made)}", **settings)
        await rig.manager.start()
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.manager.stop(grace_s=0)


async def finished(rig: Rig, job_id: str) -> Job:
    job = await rig.manager.wait(job_id, WAIT)
    assert job.status.terminal, job
    return job


async def started(req) -> None:
    assert await asyncio.to_thread(req.started.wait, WAIT)


async def test_success_records_result_artifacts_metrics_and_cleans_up(rigs):
    rig = await rigs()
    job_id, _ = rig.submit(label="a", artifacts=2)
    job = await finished(rig, job_id)
    assert job.status is JobStatus.succeeded
    assert (job.progress, job.progress_label) == (1.0, "done")
    assert job.type == "testcap" and job.capability == "testcap" and job.model == "tiny"
    assert job.result == {"label": "a", "runtime": {"model": "tiny", "quantize": 8, "options": {}},
                          "settings": {"namespace": "testcap"}, "demo": True, "inputs": ["image"]}
    assert len(job.artifacts) == 2 and job.error is None and job.queue_position is None
    assert job.metrics == {"admitted_gb": 1.0, "steps_done": 3, "peak_gb": 0.5}
    assert job.warnings == ["demo mode"] and set(job.inputs) == {"image"}
    assert job.started_at is not None and job.finished_at is not None
    meta = rig.files.stored[job.artifacts[1]].record.meta
    assert meta["job_id"] == job_id and meta["capability"] == "testcap" and meta["model"] == "tiny"
    assert meta["seed"] == 7
    assert rig.files.moved == [True]  # a file inside the workdir is moved, not copied
    assert rig.models.names(job_id) == ["begin_job", "acquire", "end_job"]
    assert rig.models.succeeded[job_id] is True
    assert await _removed(rig.work_root / job_id)  # scratch space goes right after the answer


async def test_fifo_order_and_queue_positions(rigs):
    rig = await rigs()
    gate, order = threading.Event(), []
    first, req = rig.submit(label="first", gate=gate, order=order)
    await started(req)
    ids = [rig.submit(label=f"q{i}", order=order)[0] for i in range(3)]
    assert [rig.manager.get(i).queue_position for i in ids] == [0, 1, 2]
    assert rig.manager.get(first).status is JobStatus.running
    gate.set()
    jobs = [await finished(rig, i) for i in ids]
    assert order == ["first", "q0", "q1", "q2"]
    assert all(j.status is JobStatus.succeeded for j in jobs)
    assert [j.started_at for j in jobs] == sorted(j.started_at for j in jobs)


async def test_queue_full_is_503_with_retry_after(rigs):
    rig = await rigs(max_queue=2)
    gate = threading.Event()
    _, req = rig.submit(gate=gate)
    await started(req)
    rig.submit()
    rig.submit()
    with pytest.raises(QueueFull) as info:
        rig.submit()
    assert info.value.status == 503 and info.value.code == "queue_full"
    assert int(info.value.headers["Retry-After"]) >= 1
    assert rig.manager.stats()["queued"] == 2
    gate.set()


async def test_canceled_queued_job_never_runs(rigs):
    rig = await rigs()
    gate = threading.Event()
    first, req = rig.submit(gate=gate)
    await started(req)
    victim, victim_req = rig.submit(label="victim")
    after, _ = rig.submit(label="after")
    job = rig.manager.cancel(victim)
    assert job.status is JobStatus.canceled and job.finished_at is not None and job.error is None
    assert rig.manager.get(after).queue_position == 0
    gate.set()
    assert (await finished(rig, after)).status is JobStatus.succeeded
    assert not victim_req.started.is_set()
    assert rig.models.names(victim) == []
    # Canceling a finished job changes nothing.
    assert rig.manager.cancel(victim).status is JobStatus.canceled
    assert rig.manager.cancel(first).status is JobStatus.succeeded


async def test_running_job_cancels_at_next_check_and_frees(rigs):
    rig = await rigs()
    gate = threading.Event()
    job_id, req = rig.submit(gate=gate, steps=1000)
    await started(req)
    assert rig.manager.cancel(job_id).status is JobStatus.running  # flagged, ends at next check
    job = await finished(rig, job_id)
    assert (job.status, job.progress_label) == (JobStatus.canceled, "canceled")
    assert rig.models.names(job_id)[-1] == "end_job" and rig.models.succeeded[job_id] is False
    assert await _removed(rig.work_root / job_id)  # scratch space goes right after the answer
    assert rig.manager.error_of(job_id).code == "canceled"
    nxt, _ = rig.submit()
    assert (await finished(rig, nxt)).status is JobStatus.succeeded


async def test_progress_is_monotonic_capped_and_labelled(rigs):
    rig = await rigs()
    seen: list[tuple[float | None, str]] = []
    holder: dict[str, str] = {}

    def probe() -> None:
        job = rig.manager.get(holder["id"])
        seen.append((job.progress, job.progress_label))

    script = [(0.2, "denoising"), (0.1, None), (0.5, None), (1.0, None), (2.0, "decoding"),
              (math.nan, None), (0.7, None)]
    gate = threading.Event()
    job_id, _ = rig.submit(script=script, steps=0, probe=probe, gate=gate)
    holder["id"] = job_id
    gate.set()
    job = await finished(rig, job_id)
    assert seen == [(0.2, "denoising"), (0.2, "denoising"), (0.5, "denoising"),
                    (PROGRESS_CAP, "denoising"), (PROGRESS_CAP, "decoding"), (PROGRESS_CAP, "decoding"),
                    (PROGRESS_CAP, "decoding")]
    assert (job.progress, job.progress_label) == (1.0, "done")


async def test_progress_is_throttled_but_labels_always_publish(rigs):
    rig = await rigs()
    seen: list[tuple[float | None, str]] = []
    holder: dict[str, str] = {}

    def probe() -> None:
        job = rig.manager.get(holder["id"])
        seen.append((job.progress, job.progress_label))

    script = [(0.5, "denoising"), (0.501, None), (0.502, "decoding")]
    gate = threading.Event()
    job_id, _ = rig.submit(script=script, steps=0, probe=probe, gate=gate)
    holder["id"] = job_id
    gate.set()
    await finished(rig, job_id)
    # The tiny step right after a publish is dropped (unless 0.1 s passed); the label is not.
    assert seen[0] == (0.5, "denoising")
    assert seen[1] in ((0.5, "denoising"), (0.501, "denoising"))
    assert seen[2] == (0.502, "decoding")


async def test_labels_follow_the_work_loading_then_phases(rigs):
    rig = await rigs()
    labels: list[str] = []
    holder: dict[str, str] = {}

    def probe() -> None:
        labels.append(rig.manager.get(holder["id"]).progress_label)

    rig.models.after_loading = probe
    gate = threading.Event()
    job_id, _ = rig.submit(gate=gate, steps=2, probe=probe)
    holder["id"] = job_id
    assert rig.manager.get(job_id).progress_label == "queued"
    gate.set()
    job = await finished(rig, job_id)
    assert labels == ["loading", "denoising", "denoising"]
    assert job.progress_label == "done"


@pytest.mark.parametrize("fail, code, status, text", [
    ("invalid", "invalid_request", 422, "steps must be even"),
    ("runtime", "internal_error", 500, "RuntimeError: boom"),
    ("unencodable", "invalid_result", 500, "object"),  # not its declared result Struct: a plugin bug
])
async def test_failures_map_to_error_codes_and_worker_survives(rigs, fail, code, status, text):
    rig = await rigs()
    job_id, _ = rig.submit(fail=fail)
    job = await finished(rig, job_id)
    assert (job.status, job.error_code, job.progress_label) == (JobStatus.failed, code, "failed")
    assert text in job.error
    err = rig.manager.error_of(job_id)
    assert (err.status, err.code) == (status, code)
    assert rig.models.names(job_id)[-1] == "end_job"
    nxt, _ = rig.submit()
    assert (await finished(rig, nxt)).status is JobStatus.succeeded
    assert rig.manager.stats()["worker_alive"]


async def test_memory_budget_refusal_fails_the_job_with_503(rigs):
    rig = await rigs()
    rig.models.refuse.add("big")
    job_id, req = rig.submit(label="big")
    job = await finished(rig, job_id)
    assert (job.status, job.error_code) == (JobStatus.failed, "memory_budget")
    assert rig.manager.error_of(job_id).status == 503
    assert not req.started.is_set()
    assert rig.models.names(job_id) == ["begin_job", "end_job"]


async def test_end_job_failure_and_bad_handler_do_not_kill_the_worker(rigs):
    rig = await rigs()
    rig.models.fail_end = True
    first, _ = rig.submit()
    assert (await finished(rig, first)).status is JobStatus.succeeded
    rig.models.fail_end = False
    broken, _ = rig.submit(BROKEN)
    job = await finished(rig, broken)
    assert job.error_code == "internal_error" and "ModuleNotFoundError" in job.error
    lazy, _ = rig.submit(LAZY, label="lazy")
    job = await finished(rig, lazy)
    assert job.status is JobStatus.succeeded and job.result["label"] == "lazy"


async def test_wait_change_and_events_deliver_the_terminal_state(rigs):
    rig = await rigs()
    gate = threading.Event()
    job_id, req = rig.submit(gate=gate, steps=3)
    await started(req)
    # Unchanged: answers at the timeout with the same state.
    same = await rig.manager.wait_change(job_id, 0.05)
    assert same.status is JobStatus.running
    changed = asyncio.create_task(rig.manager.wait_change(job_id, WAIT))
    snapshots: list[Job] = []

    async def collect() -> None:
        async for job in rig.manager.events(job_id, keepalive_s=WAIT):
            if job is not None:
                snapshots.append(job)

    events = asyncio.create_task(collect())
    await asyncio.sleep(0)
    gate.set()
    assert change_key(await asyncio.wait_for(changed, WAIT)) != change_key(same)
    await asyncio.wait_for(events, WAIT)
    assert snapshots[-1].status is JobStatus.succeeded
    progress = [s.progress for s in snapshots]
    assert progress == sorted(progress)
    assert all(s.progress < 1.0 for s in snapshots[:-1])
    terminal = await rig.manager.wait_change(job_id, WAIT)
    assert terminal.status is JobStatus.succeeded  # a terminal job answers at once


async def test_delete_queued_running_and_finished(rigs):
    rig = await rigs()
    gate = threading.Event()
    running, req = rig.submit(gate=gate, steps=1000)
    await started(req)
    queued, queued_req = rig.submit()
    job, was_running = rig.manager.delete(queued)
    assert (job.status, was_running) == (JobStatus.canceled, False)
    job, was_running = rig.manager.delete(running)
    assert was_running
    for job_id in (queued, running):
        with pytest.raises(NotFound):
            rig.manager.get(job_id)
    nxt, _ = rig.submit()
    assert (await finished(rig, nxt)).status is JobStatus.succeeded  # the deleted one stopped
    assert rig.models.names(running)[-1] == "end_job"
    assert not queued_req.started.is_set()
    rig.manager.delete(nxt)
    with pytest.raises(NotFound):
        rig.manager.delete(nxt)


async def test_retention_by_count_through_the_manager(rigs):
    rig = await rigs(max_jobs=2)
    ids = []
    for i in range(4):
        job_id, _ = rig.submit(label=str(i))
        await finished(rig, job_id)
        ids.append(job_id)
    page = rig.manager.list_jobs()
    assert [j.id for j in page.jobs] == ids[:1:-1]
    with pytest.raises(NotFound):
        rig.manager.get(ids[0])


def test_store_retention_by_ttl_and_count_keeps_active_jobs():
    store = MemoryJobStore(ttl_s=100.0, max_jobs=2)
    active = Job(type="t", id="job_active", created_at=0.0)
    store.add(active)
    for i in range(3):
        job = Job(type="t", id=f"job_{i}", created_at=float(i + 1))
        store.add(job)
        job.status, job.finished_at = JobStatus.succeeded, 10.0 * (i + 1)
        store.save(job)
    assert store.prune(now=11.0) == ["job_0"]          # count: 3 finished > 2
    assert store.prune(now=50.0) == []
    assert store.prune(now=120.0) == ["job_1"]         # finished at 20, ttl 100
    assert store.prune(now=1e9) == ["job_2"]
    assert store.get("job_active") is active and len(store) == 1
    unlimited = MemoryJobStore(ttl_s=0, max_jobs=0)
    old = Job(type="t", id="job_old", status=JobStatus.failed, finished_at=1.0)
    unlimited.add(old)
    assert unlimited.prune(now=1e12) == []


def test_store_listing_filters_and_pages_newest_first():
    store = MemoryJobStore(ttl_s=0, max_jobs=0)
    for i in range(6):
        status = JobStatus.failed if i % 2 else JobStatus.queued
        store.add(Job(type="a" if i < 3 else "b", id=f"job_{i}", status=status, created_at=float(i)))
    page = store.page(limit=4)
    assert [j.id for j in page.jobs] == ["job_5", "job_4", "job_3", "job_2"] and page.has_more
    page = store.page(limit=4, after="job_2")
    assert [j.id for j in page.jobs] == ["job_1", "job_0"] and not page.has_more
    assert [j.id for j in store.page(status={JobStatus.failed}).jobs] == ["job_5", "job_3", "job_1"]
    assert [j.id for j in store.page(type="a", status={JobStatus.queued}).jobs] == ["job_2", "job_0"]
    page = store.page(type="b", limit=3)
    assert [j.id for j in page.jobs] == ["job_5", "job_4", "job_3"] and not page.has_more
    with pytest.raises(InvalidRequest):
        store.page(after="job_missing")


async def test_list_through_the_manager_filters_by_type_and_status(rigs):
    rig = await rigs()
    a, _ = rig.submit(label="a")
    b, _ = rig.submit(OTHER, label="b")
    c, _ = rig.submit(fail="runtime")
    for job_id in (a, b, c):
        await finished(rig, job_id)
    assert [j.id for j in rig.manager.list_jobs(type="testcap-other").jobs] == [b]
    assert [j.id for j in rig.manager.list_jobs(status={JobStatus.failed}).jobs] == [c]
    assert [j.id for j in rig.manager.list_jobs(limit=1, after=c).jobs] == [b]


async def test_graceful_stop_lets_the_running_job_finish(rigs):
    rig = await rigs()
    gate = threading.Event()
    running, req = rig.submit(gate=gate)
    await started(req)
    queued, queued_req = rig.submit()
    stopping = asyncio.create_task(rig.manager.stop(grace_s=WAIT))
    job = await finished(rig, queued)
    assert (job.status, job.error_code) == (JobStatus.canceled, "shutting_down")
    assert "shut down" in job.error and rig.manager.error_of(queued).status == 503
    with pytest.raises(Unavailable) as info:
        rig.submit()
    assert info.value.code == "shutting_down"
    gate.set()
    await asyncio.wait_for(stopping, WAIT)
    assert rig.manager.get(running).status is JobStatus.succeeded
    assert not queued_req.started.is_set()
    assert not rig.manager.stats()["worker_alive"]


async def test_graceful_stop_cancels_a_job_that_outlives_the_grace(rigs):
    rig = await rigs()
    gate = threading.Event()
    running, req = rig.submit(gate=gate, steps=1000)
    await started(req)
    await asyncio.wait_for(rig.manager.stop(grace_s=0.01), WAIT)
    job = rig.manager.get(running)
    assert job.status is JobStatus.canceled
    assert rig.models.names(running)[-1] == "end_job"


async def test_graceful_stop_answers_waiters_of_a_job_that_ignores_cancel(rigs, monkeypatch):
    monkeypatch.setattr(manager_module, "CANCEL_WAIT_S", 0.05)
    rig = await rigs()
    gate = threading.Event()
    running, req = rig.submit(gate=gate, deaf=True)
    await started(req)
    waiter = asyncio.create_task(rig.manager.wait(running, WAIT))
    await asyncio.wait_for(rig.manager.stop(grace_s=0.01), WAIT)
    job = await asyncio.wait_for(waiter, WAIT)
    assert (job.status, job.error_code) == (JobStatus.failed, "shutting_down")
    gate.set()  # let the abandoned handler end; its late outcome must not overwrite the answer
    await asyncio.to_thread(rig.manager._worker.join, WAIT)
    assert rig.manager.get(running).status is JobStatus.failed


async def test_stats_for_health(rigs):
    rig = await rigs(max_queue=5)
    gate = threading.Event()
    running, req = rig.submit(gate=gate)
    await started(req)
    rig.submit()
    stats = rig.manager.stats()
    assert stats["queued"] == 1 and stats["max_queue"] == 5 and stats["accepting"]
    assert stats["running"]["id"] == running and stats["running"]["type"] == "testcap"
    assert stats["totals"]["submitted"] == 2
    gate.set()


async def test_run_on_worker_serialises_admin_work_with_jobs(rigs):
    rig = await rigs()
    gate = threading.Event()
    running, req = rig.submit(gate=gate)
    await started(req)
    queued, _ = rig.submit(label="queued")
    order: list[str] = []

    def admin() -> str:
        order.append(f"admin after {rig.manager.get(running).status.value}")
        return threading.current_thread().name

    task = asyncio.create_task(rig.manager.run_on_worker(admin))
    await asyncio.sleep(0.01)
    assert not task.done()  # waits for the running job, but goes before the queued one
    gate.set()
    assert await asyncio.wait_for(task, WAIT) == "kiapi-model-worker"
    assert order == ["admin after succeeded"]
    assert rig.manager.get(queued).status in (JobStatus.queued, JobStatus.running, JobStatus.succeeded)

    def broken() -> None:
        raise ValueError("no such model")

    with pytest.raises(ValueError, match="no such model"):
        await asyncio.wait_for(rig.manager.run_on_worker(broken), WAIT)
    assert (await finished(rig, queued)).status is JobStatus.succeeded
    await rig.manager.stop(grace_s=0)
    with pytest.raises(Unavailable):
        await rig.manager.run_on_worker(admin)


async def test_errors_keep_their_status_for_sync_callers(rigs):
    rig = await rigs()
    ok, _ = rig.submit()
    bad, _ = rig.submit(fail="invalid")
    await finished(rig, ok)
    await finished(rig, bad)
    assert rig.manager.error_of(ok) is None
    assert rig.manager.error_of(bad).status == 422
    assert rig.manager.error_of(bad).extra == {"field": "steps"}  # the plugin's extras survive


async def _removed(path, timeout_s: float = 5.0) -> bool:
    """The worker removes a job's scratch directory just after finishing it."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while path.exists() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.005)
    return not path.exists()
