"""The per-job path of the job manager (#19, host speed): listeners off the lock and after the
answer, one services bundle, and scratch and cache directories made only when used."""

from __future__ import annotations

import asyncio
import threading

import pytest

from helpers_jobs import WAIT, Rig, make_rig
from kiapi_core.jobs.models import JobStatus
from kiapi_core.jobs.services import JobServices


@pytest.fixture
async def rig(tmp_path):
    made = make_rig(tmp_path / "rig")
    await made.manager.start()
    yield made
    await made.manager.stop(grace_s=0)


async def test_a_blocked_listener_neither_holds_the_lock_nor_delays_the_answer(rig: Rig):
    """The worker wakes the waiters first and calls listeners after it let go of the lock: a
    listener stuck on ``finished`` leaves the answer, reads and new submissions unaffected."""
    release, entered = threading.Event(), threading.Event()

    def stuck(event, job):
        if event == "finished" and not entered.is_set():
            entered.set()
            release.wait(WAIT)

    rig.manager.listeners.append(stuck)
    try:
        job_id, _ = rig.submit(label="a")
        job = await rig.manager.wait(job_id, WAIT)
        assert job.status is JobStatus.succeeded  # answered while the listener is still stuck
        assert await asyncio.to_thread(entered.wait, WAIT)
        assert rig.manager.get(job_id).status is JobStatus.succeeded  # the lock is free
        second, _ = rig.submit(label="b")  # and the loop can still queue jobs
        assert rig.manager.get(second).status in (JobStatus.queued, JobStatus.running)
    finally:
        release.set()
    assert (await rig.manager.wait(second, WAIT)).status is JobStatus.succeeded


async def test_listeners_hear_every_job_in_order_on_any_thread_outside_the_lock(rig: Rig):
    heard: list[tuple[str, str, JobStatus]] = []
    lock_free: list[bool] = []

    def listener(event, job):
        # Under the old design listeners ran holding the (non-reentrant) lock: this timed out.
        got = rig.manager._lock.acquire(timeout=WAIT)
        lock_free.append(got)
        if got:
            rig.manager._lock.release()
        heard.append((job.id, event, job.status))

    rig.manager.listeners.append(listener)
    ids = [rig.submit(label=f"j{i}")[0] for i in range(5)]
    for job_id in ids:
        assert (await rig.manager.wait(job_id, WAIT)).status is JobStatus.succeeded
    for _ in range(100):  # the last job's listeners may still be running on the worker
        if sum(1 for _, event, _ in heard if event == "finished") == len(ids):
            break
        await asyncio.sleep(0.02)
    assert all(lock_free)
    for job_id in ids:
        events = [(event, status) for seen, event, status in heard if seen == job_id and event != "progress"]
        assert events == [("queued", JobStatus.queued), ("started", JobStatus.running),
                          ("finished", JobStatus.succeeded)]


async def test_one_services_bundle_reaches_every_job(tmp_path):
    """The host's services travel as one JobServices: a handler sees its settings, demo flag and
    cache directory from it; scratch space is made only when a handler asks for it."""
    rig = make_rig(tmp_path / "rig")
    services = rig.manager._worker._services
    assert isinstance(services, JobServices) and services.files is rig.files and services.models is rig.models
    assert rig.manager._pool._make_worker()._services.models is rig.manager._pool.models  # the pool's own
    await rig.manager.start()
    try:
        job_id, _ = rig.submit(label="a", artifacts=0)
        job = await rig.manager.wait(job_id, WAIT)
        assert job.result["settings"] == {"namespace": "testcap"} and job.result["demo"] is True
        assert not (rig.work_root / job_id).exists()  # never asked for: never made
    finally:
        await rig.manager.stop(grace_s=0)


def test_flush_waits_for_the_thread_delivering_then_delivers_what_is_left():
    """At shutdown, events another thread was left to deliver reach the listeners before
    ``flush`` returns (a completion webhook must not be lost to a slow delivering thread)."""
    from kiapi_core.jobs.events import JobEvents
    from kiapi_core.jobs.models import Job

    events, heard, inside, release = JobEvents(), [], threading.Event(), threading.Event()

    def listener(event: str, job: Job) -> None:
        if event == "started":
            inside.set()
            release.wait(10)
        heard.append(event)

    events.listeners.append(listener)
    job = Job(id="job_1", type="t", status=JobStatus.running, created_at=0.0)
    events.record("started", job)
    slow = threading.Thread(target=events.deliver)
    slow.start()
    assert inside.wait(10)
    events.record("finished", job)
    events.deliver()  # the slow thread is delivering: "finished" is left to it
    assert heard == []
    threading.Timer(0.2, release.set).start()
    events.flush(timeout_s=10)
    assert heard == ["started", "finished"]
    slow.join(10)
