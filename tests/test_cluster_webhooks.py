"""The cluster's shared webhook store on a real PostgreSQL: what each host records and claims
(the multi-host behaviour is in test_cluster_failures.py)."""

from __future__ import annotations

import time

import pytest

from kiapi_core.cluster.interfaces import ClaimerState, Submission
from kiapi_core.jobs.manager import new_job_id
from kiapi_core.jobs.models import Job, JobStatus
from kiapi_core.webhooks.dispatcher import event_body
from kiapi_core.webhooks.store import Subscription

ALL = Subscription(url="http://127.0.0.1:9/hook", events=frozenset({"start", "progress", "completed"}))


@pytest.fixture
def rig(pg_url):
    from kiapi_core.cluster.pg import PgJobBackend, PgWebhookStore, connect_pool

    pool = connect_pool(pg_url)
    store = PgWebhookStore(pool, claim_s=30.0)
    store.body_of = event_body
    yield PgJobBackend(pool), store
    pool.close()


def _queued(backend) -> Job:
    job = Job(type="t", id=new_job_id(), created_at=time.time(), capability="cap", model="m")
    return backend.submit(Submission(job, b"{}", 0.0, 0.0), max_queue=10)


def _claim(backend, host="h1"):
    return backend.claim(ClaimerState(host_id=host, capabilities=["cap"], resident=[], claimable_gb=10.0,
                                      affinity_wait_s=0.0, lease_s=30.0))


def _events(store) -> list[str]:
    with store.pool.connection() as conn:
        return [r[0] for r in conn.execute("SELECT event FROM kiapi_webhook_deliveries ORDER BY seq").fetchall()]


def test_a_start_another_host_recorded_first_is_caught_up_once(rig):
    backend, store = rig
    job = _queued(backend)
    claim = _claim(backend)
    store.add_event(job.id, "start", event_body("start", claim.job), time.time())  # no subscription yet: lost
    store.subscribe(job.id, ALL)  # ... so the subscriber records it
    store.add_event(job.id, "start", event_body("start", claim.job), time.time())  # a late duplicate: ignored
    store.add_event(job.id, "progress", event_body("progress", claim.job), time.time())
    assert _events(store) == ["start", "progress"]


def test_a_completion_whose_host_died_is_recorded_from_the_job_once(rig):
    backend, store = rig
    job = _queued(backend)
    store.subscribe(job.id, ALL)
    claim = _claim(backend)
    store.add_event(job.id, "start", event_body("start", claim.job), time.time())
    assert store.complete_orphans(time.time()) == 0  # still running: nothing to complete
    claim.job.status, claim.job.finished_at = JobStatus.succeeded, time.time()
    backend.finish(claim.job, "h1", claim.attempt, None)  # ... and its host died before recording
    assert store.complete_orphans(time.time()) == 1
    assert store.complete_orphans(time.time()) == 0
    store.add_event(job.id, "completed", event_body("completed", claim.job), time.time())  # too late: ignored
    assert _events(store) == ["start", "completed"]
    gone = _queued(backend)
    store.subscribe(gone.id, ALL)
    backend.remove(gone.id)
    assert store.complete_orphans(time.time()) == 0  # a deleted job's subscription just goes
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM kiapi_webhook_subs").fetchone()[0] == 0


def test_senders_claim_each_jobs_oldest_delivery_and_never_the_same_one(rig):
    backend, store = rig
    jobs = [_queued(backend) for _ in range(3)]
    for job in jobs:
        store.subscribe(job.id, ALL)
        for event in ("start", "completed"):
            store.add_event(job.id, event, event_body(event, job), time.time())
    now = time.time()
    first, _ = store.due(now, limit=2)
    second, _ = store.due(now, limit=8)
    assert len(first) == 2 and len(second) == 1  # one job's oldest each; claimed ones are not due again
    assert {d.job_id for d in first + second} == {j.id for j in jobs}
    assert all(d.event == "start" for d in first + second)
    store.done(first[0].seq)
    store.retry(first[1].seq, 1, now - 1, "HTTP 500")  # due again at once, still before its job's completion
    again, _ = store.due(time.time(), limit=8)
    assert sorted((d.job_id, d.event) for d in again) == sorted(
        [(first[0].job_id, "completed"), (first[1].job_id, "start")])
    assert next(d for d in again if d.event == "start").attempts == 1
