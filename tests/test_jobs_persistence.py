"""Job records in SQLite (restart semantics, retention) and Idempotency-Key retries over HTTP.

The real-process proof (``kill -9`` and restart) is in ``test_server_process.py``; these tests
run in-process and fast.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time

import pytest

import kiapi_echo
from kiapi_core.jobs.models import Job, JobStatus
from kiapi_core.jobs.sqlite_store import SqliteJobStore
from kiapi_core.jobs.store import MemoryJobStore


def _job(n: int, status: JobStatus, finished_at: float | None = None) -> Job:
    return Job(type="echo", id=f"job_{n:032x}", status=status, created_at=1000.0 + n,
               finished_at=finished_at, params={"n": n})


def test_records_survive_reopen_and_active_jobs_end_failed(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path, ttl_s=0, max_jobs=0)
    assert store.open() == []
    done = _job(1, JobStatus.succeeded, finished_at=time.time())
    done.artifacts.append("file_" + "a" * 32)
    store.add(done, ("key-1", "fp-1"))
    running, queued = _job(2, JobStatus.running), _job(3, JobStatus.queued)
    store.add(running)
    store.add(queued)
    running.progress = 0.5
    store.save(running)  # progress-only change of an active job: may be deferred, never lost
    store.close()

    again = SqliteJobStore(path, ttl_s=0, max_jobs=0)
    recovered = again.open()
    assert {j.id for j in recovered} == {running.id, queued.id}
    assert [j.id for j in again.page().jobs] == [queued.id, running.id, done.id]  # creation order kept
    assert again.get(done.id) == done
    for job_id in (running.id, queued.id):
        job = again.get(job_id)
        assert job.status is JobStatus.failed and job.error_code == "server_restarted"
        assert "restarted" in job.error and job.finished_at is not None and job.progress_label == "failed"
    assert again.by_idempotency_key("key-1") == (done, "fp-1")
    again.close()
    # The recovery itself was persisted: a third start finds nothing left to recover.
    third = SqliteJobStore(path, ttl_s=0, max_jobs=0)
    assert third.open() == [] and len(third) == 3
    third.close()


def test_retention_applies_to_the_persisted_store(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path, ttl_s=0, max_jobs=0)
    store.open()
    now = time.time()
    for n in range(5):
        store.add(_job(n, JobStatus.succeeded, finished_at=now - 100 + n), (f"k{n}", "fp"))
    store.close()
    small = SqliteJobStore(path, ttl_s=0, max_jobs=2)
    small.open()  # retention runs on open
    assert [j.id for j in small.page().jobs] == [_job(4, JobStatus.queued).id, _job(3, JobStatus.queued).id]
    assert small.by_idempotency_key("k0") is None and small.by_idempotency_key("k4") is not None
    small.remove(_job(4, JobStatus.queued).id)
    small.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
    aged = SqliteJobStore(path, ttl_s=10, max_jobs=0)
    aged.open()
    assert len(aged) == 0  # finished 97 s ago, ttl 10 s
    aged.close()


def test_memory_store_keeps_idempotency_keys_with_the_job():
    store = MemoryJobStore(ttl_s=0, max_jobs=1)
    store.add(_job(1, JobStatus.succeeded, finished_at=1.0), ("k", "fp"))
    assert store.by_idempotency_key("k")[1] == "fp"
    store.add(_job(2, JobStatus.succeeded, finished_at=2.0))
    store.prune()
    assert store.by_idempotency_key("k") is None


async def test_host_restart_keeps_jobs_and_artifacts(kiapi_client_factory, tmp_path):
    data = str(tmp_path / "data")
    async with kiapi_client_factory(plugins=[kiapi_echo], data_dir=data) as http:
        r = await http.post("/v1/text/echo/render", json={"text": "kept"})
        assert r.status_code == 200
        job_id, file_id = r.headers["x-kiapi-job-id"], r.headers["x-kiapi-file-id"]
    assert (tmp_path / "data" / "jobs.sqlite3").exists()
    async with kiapi_client_factory(plugins=[kiapi_echo], data_dir=data) as http:
        listed = (await http.get("/v1/jobs")).json()["data"]
        assert [j["id"] for j in listed] == [job_id] and listed[0]["status"] == "succeeded"
        assert listed[0]["artifacts"] == [file_id]
        assert (await http.get(f"/v1/files/{file_id}/download")).content == b"kept"


# --- Idempotency-Key ---------------------------------------------------------------------------

@pytest.fixture
async def client(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[kiapi_echo]) as http:
        yield http


async def _jobs(http) -> list[dict]:
    return (await http.get("/v1/jobs")).json()["data"]


async def test_async_retry_returns_the_same_job(client):
    key = {"Idempotency-Key": "order-123"}
    first = await client.post("/v1/text/echo/render", json={"text": "x", "mode": "async"}, headers=key)
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    # Same body, other key order and spacing: still the same request.
    again = await client.post("/v1/text/echo/render", content=b'{ "mode": "async",  "text": "x" }',
                              headers={**key, "content-type": "application/json"})
    assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == f"/v1/jobs/{first.json()['job_id']}"
    assert len(await _jobs(client)) == 1


async def test_sync_retry_returns_the_same_result(client):
    key = {"Idempotency-Key": "sync-1"}
    first = await client.post("/v1/text/echo/render", json={"text": "once"}, headers=key)
    again = await client.post("/v1/text/echo/render", json={"text": "once"}, headers=key)
    assert first.status_code == again.status_code == 200 and again.content == b"once"
    assert again.headers["x-kiapi-job-id"] == first.headers["x-kiapi-job-id"]
    assert again.headers["x-kiapi-file-id"] == first.headers["x-kiapi-file-id"]
    failed = await client.post("/v1/text/echo/fail", json={}, headers={"Idempotency-Key": "f"})
    replay = await client.post("/v1/text/echo/fail", json={}, headers={"Idempotency-Key": "f"})
    assert failed.status_code == replay.status_code == 500
    assert replay.json()["job_id"] == failed.json()["job_id"]
    assert len(await _jobs(client)) == 2


async def test_sync_retry_while_running_waits_for_the_same_job(client):
    gate = kiapi_echo.GATES["idem"] = threading.Event()
    body = {"steps": 2, "gate": "idem"}
    key = {"Idempotency-Key": "slow-1"}
    try:
        first = asyncio.create_task(client.post("/v1/text/echo/slow", json=body, headers=key))
        while not await _jobs(client):
            await asyncio.sleep(0.01)
        second = asyncio.create_task(client.post("/v1/text/echo/slow", json=body, headers=key))
        await asyncio.sleep(0.05)
        gate.set()
        a, b = await first, await second
    finally:
        kiapi_echo.GATES.pop("idem", None)
    assert a.status_code == b.status_code == 200
    assert a.headers["x-kiapi-job-id"] == b.headers["x-kiapi-job-id"]
    assert len(await _jobs(client)) == 1


async def test_same_key_other_body_is_409(client):
    key = {"Idempotency-Key": "k"}
    first = await client.post("/v1/text/echo/render", json={"text": "a", "mode": "async"}, headers=key)
    r = await client.post("/v1/text/echo/render", json={"text": "b", "mode": "async"}, headers=key)
    assert r.status_code == 409 and r.json()["code"] == "idempotency_conflict"
    assert r.json()["job_id"] == first.json()["job_id"] and "new key" in r.json()["detail"]
    # Keys are scoped per operation path: the same key on another operation is another request.
    other = await client.post("/v1/text/echo/pair", json={"mode": "async"}, headers=key)
    assert other.status_code == 202 and other.json()["job_id"] != first.json()["job_id"]


async def test_concurrent_identical_requests_create_one_job(client):
    key = {"Idempotency-Key": "race"}
    answers = await asyncio.gather(*(client.post("/v1/text/echo/render", json={"text": "r", "mode": "async"},
                                                 headers=key) for _ in range(5)))
    assert {r.status_code for r in answers} == {202}
    assert len({r.json()["job_id"] for r in answers}) == 1 and len(await _jobs(client)) == 1


async def test_bad_keys_and_forgotten_jobs(client):
    r = await client.post("/v1/text/echo/render", json={"text": "a"}, headers={"Idempotency-Key": "x" * 300})
    assert r.status_code == 400 and r.json()["code"] == "invalid_idempotency_key"
    assert await _jobs(client) == []
    # A request rejected before it became a job does not use up its key.
    key = {"Idempotency-Key": "retry-after-fix"}
    bad = await client.post("/v1/text/echo/render", json={"text": "forbidden", "mode": "async"}, headers=key)
    assert bad.status_code == 422
    ok = await client.post("/v1/text/echo/render", json={"text": "forbidden", "mode": "async"}, headers=key)
    assert ok.status_code == 422
    # Deleting the job forgets its key.
    first = await client.post("/v1/text/echo/render", json={"text": "d", "mode": "async"}, headers={"Idempotency-Key": "d"})
    await client.wait_job(first.json()["job_id"])
    assert (await client.delete(f"/v1/jobs/{first.json()['job_id']}")).status_code == 200
    new = await client.post("/v1/text/echo/render", json={"text": "d", "mode": "async"}, headers={"Idempotency-Key": "d"})
    assert new.status_code == 202 and new.json()["job_id"] != first.json()["job_id"]


async def test_keys_work_with_auth_and_survive_restart(kiapi_client_factory, tmp_path):
    data = str(tmp_path / "data")
    auth = {"Authorization": "Bearer secret", "Idempotency-Key": "persist"}
    async with kiapi_client_factory(plugins=[kiapi_echo], data_dir=data, auth_token="secret") as http:
        first = await http.post("/v1/text/echo/render", json={"text": "p", "mode": "async"}, headers=auth)
        assert first.status_code == 202
        job = (await http.get(f"/v1/jobs/{first.json()['job_id']}?wait=10", headers=auth)).json()
        while job["status"] not in ("succeeded", "failed"):
            job = (await http.get(f"/v1/jobs/{job['id']}?wait=10", headers=auth)).json()
    async with kiapi_client_factory(plugins=[kiapi_echo], data_dir=data, auth_token="secret") as http:
        again = await http.post("/v1/text/echo/render", json={"text": "p", "mode": "async"}, headers=auth)
        assert again.status_code == 202 and again.json()["job_id"] == first.json()["job_id"]


async def test_failed_sync_replay_after_restart_answers_the_stored_error(kiapi_client_factory, tmp_path):
    data = str(tmp_path / "data")
    key = {"Idempotency-Key": "failed-then-restart"}
    body = {"how": "invalid"}
    async with kiapi_client_factory(plugins=[kiapi_echo], data_dir=data) as http:
        failed = await http.post("/v1/text/echo/fail", json=body, headers=key)
        assert failed.status_code == 422 and failed.json()["code"] == "invalid_request"
    async with kiapi_client_factory(plugins=[kiapi_echo], data_dir=data) as http:
        replay = await http.post("/v1/text/echo/fail", json=body, headers=key)
    assert replay.status_code == 422, replay.text
    assert replay.json()["code"] == "invalid_request" and replay.json()["job_id"] == failed.json()["job_id"]
    assert replay.json()["detail"] == failed.json()["detail"]


def test_error_codes_map_back_to_their_classes():
    from kiapi_core.errors import InvalidRequest, KiapiError, WeightsMissing, error_from_code

    assert type(error_from_code("invalid_request", "x")) is InvalidRequest
    assert error_from_code("weights_missing", "x").status == WeightsMissing.status == 503
    unknown = error_from_code("server_restarted", "x")
    assert type(unknown) is KiapiError and unknown.status == 500 and unknown.code == "server_restarted"
