"""The job backend and event bus contract, run against the local and the PostgreSQL backends."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest

from kiapi_core.cluster.interfaces import ClaimerState, Fenced, HostState, PersistedError, Submission
from kiapi_core.cluster.local import LocalEventBus, LocalJobBackend
from kiapi_core.errors import Conflict, InvalidRequest, QueueFull
from kiapi_core.jobs.manager import new_job_id
from kiapi_core.jobs.models import Job, JobStatus
from kiapi_core.jobs.store import IdempotentReplay


@pytest.fixture(params=["local", "pg"])
def backend(request):
    if request.param == "local":
        yield LocalJobBackend(LocalEventBus())
        return
    from kiapi_core.cluster.pg import PgJobBackend, connect_pool

    pool = connect_pool(request.getfixturevalue("pg_url"))
    yield PgJobBackend(pool)
    pool.close()


def submit(backend, *, capability="cap", model="m", need_gb=1.0, load_gb=2.0, key=None, max_queue=100,
           job_type="t", light=False) -> Job:
    job = Job(type=job_type, id=new_job_id(), created_at=time.time(), capability=capability, model=model,
              params={"x": 1})
    return backend.submit(Submission(job, b'{"operation": "op"}', need_gb, load_gb, key, light=light),
                          max_queue=max_queue)


def claimer(host="h1", caps=("cap",), resident=(), gb=10.0, wait_s=0.0, lease_s=30.0, exclude=(), light=False):
    return ClaimerState(host_id=host, capabilities=list(caps), resident=list(resident), claimable_gb=gb,
                        affinity_wait_s=wait_s, lease_s=lease_s, exclude=list(exclude), light=light)


def test_records_queue_positions_listing_and_cursor(backend):
    jobs = [submit(backend, job_type="a" if i % 2 else "b") for i in range(5)]
    assert [backend.get(j.id).queue_position for j in jobs] == [0, 1, 2, 3, 4]
    assert backend.get(new_job_id()) is None and backend.queued() == 5
    page = backend.page(limit=2)
    assert [j.id for j in page.jobs] == [jobs[4].id, jobs[3].id] and page.has_more
    rest = backend.page(limit=10, after=page.jobs[-1].id)
    assert [j.id for j in rest.jobs] == [jobs[2].id, jobs[1].id, jobs[0].id] and not rest.has_more
    assert {j.type for j in backend.page(type="a").jobs} == {"a"}
    with pytest.raises(InvalidRequest):
        backend.page(after=new_job_id())
    with pytest.raises(QueueFull):
        submit(backend, max_queue=5)


def test_idempotency_replays_the_same_request_and_refuses_another(backend):
    first = submit(backend, key=("k", "fp1"))
    with pytest.raises(IdempotentReplay) as replay:
        submit(backend, key=("k", "fp1"))
    assert replay.value.job.id == first.id
    with pytest.raises(Conflict):
        submit(backend, key=("k", "fp2"))
    assert backend.find_idempotent("k")[0].id == first.id
    backend.remove(first.id)
    assert backend.find_idempotent("k") is None
    assert submit(backend, key=("k", "fp2")).id != first.id


def test_claim_is_fifo_and_marks_running_under_the_claimer(backend):
    first, second = submit(backend), submit(backend)
    claim = backend.claim(claimer())
    assert claim.job.id == first.id and claim.attempt == 1 and claim.request == b'{"operation": "op"}'
    job = backend.get(first.id)
    assert job.status is JobStatus.running and job.progress == 0.0 and job.queue_position is None
    assert backend.get(second.id).queue_position == 0


def test_concurrent_claims_never_take_one_job_twice(backend):
    ids = {submit(backend).id for _ in range(20)}
    taken: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while (claim := backend.claim(claimer(host=name))) is not None:
            with lock:
                taken.append(claim.job.id)

    threads = [threading.Thread(target=worker, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(ids)


def test_claim_predicate_capability_memory_and_model_load(backend):
    big = submit(backend, need_gb=4.0, load_gb=5.0)
    assert backend.claim(claimer(caps=("other",))) is None
    assert backend.claim(claimer(gb=8.9)) is None            # 4 + a 5 GB model load does not fit
    assert backend.claim(claimer(gb=8.9, resident=("cap:m",))).job.id == big.id  # resident: 4 fits


def test_affinity_waits_for_the_host_with_the_model_resident(backend):
    backend.heartbeat(HostState(id="warm", capabilities=["cap"], resident=["cap:m"], budget_gb=10))
    job = submit(backend)
    assert backend.claim(claimer(host="cold", wait_s=30.0)) is None   # the warm host should get it
    assert backend.claim(claimer(host="cold", wait_s=0.0)).job.id == job.id  # after the wait, anyone
    other = submit(backend, model="n")                                 # nobody has n: no waiting
    assert backend.claim(claimer(host="cold", wait_s=30.0)).job.id == other.id
    third = submit(backend)
    assert backend.claim(claimer(host="warm", resident=("cap:m",), wait_s=30.0)).job.id == third.id
    fourth = submit(backend)
    assert backend.claim(claimer(host="cold", wait_s=30.0, exclude=[fourth.id])) is None


def test_fenced_writes_renewals_and_finish(backend):
    job = submit(backend)
    claim = backend.claim(claimer())
    running = claim.job
    running.progress = 0.5
    backend.write(running, "h1", 1)
    assert backend.get(job.id).progress == 0.5
    for owner, attempt in (("h2", 1), ("h1", 2)):
        with pytest.raises(Fenced):
            backend.write(running, owner, attempt)
        assert not backend.renew(job.id, owner, attempt, 30.0)
    assert backend.renew(job.id, "h1", 1, 30.0)
    running.status, running.finished_at, running.error, running.error_code = (JobStatus.failed, time.time(),
                                                                               "bad", "invalid_input")
    backend.finish(running, "h1", 1, PersistedError(status=400, code="invalid_input", detail="bad"))
    assert backend.get(job.id).status is JobStatus.failed
    assert backend.error_of(job.id) == PersistedError(status=400, code="invalid_input", detail="bad")
    with pytest.raises(Fenced):
        backend.finish(running, "h1", 1, None)  # once terminal, nobody writes it again


def test_reaping_reruns_then_fails_host_lost_and_fences_the_old_owner(backend):
    job = submit(backend)
    first = backend.claim(claimer(host="h1", lease_s=0.2))
    first.job.artifacts.append("file_0")
    backend.write(first.job, "h1", 1)
    assert backend.reap(max_attempts=2) == []
    time.sleep(0.35)
    [(requeued, lost)] = backend.reap(max_attempts=2)
    assert requeued.status is JobStatus.queued and lost == ["file_0"] and requeued.artifacts == []
    assert any("was lost" in w for w in backend.get(job.id).warnings)
    with pytest.raises(Fenced):
        backend.write(first.job, "h1", 1)
    second = backend.claim(claimer(host="h2", lease_s=0.2))
    assert second.attempt == 2
    time.sleep(0.35)
    [(failed, _)] = backend.reap(max_attempts=2)
    assert failed.status is JobStatus.failed and failed.error_code == "host_lost"
    assert backend.get(job.id).status is JobStatus.failed and backend.error_of(job.id).status == 503


def test_light_jobs_are_claimed_only_by_light_pool_claims(backend):
    model_job = submit(backend)
    light_job = submit(backend, light=True)
    assert backend.claim(claimer(light=True)).job.id == light_job.id  # not the older model job
    assert backend.claim(claimer(light=True)) is None
    assert backend.claim(claimer()).job.id == model_job.id
    # Light jobs wait for no host with the model resident (the pool does not use resident models).
    backend.heartbeat(HostState(id="warm", capabilities=["cap"], resident=["cap:m"], budget_gb=10))
    other = submit(backend, light=True)
    assert backend.claim(claimer(host="cold", wait_s=30.0, light=True)).job.id == other.id


def test_queued_needs_and_labels_for_placement(backend):
    first = submit(backend, need_gb=3.0, load_gb=4.0)
    second = submit(backend, light=True, model="n")
    needs = backend.queued_needs(10)
    assert [(n.job_id, n.capability, n.model_key, n.need_gb, n.load_gb, n.light, n.progress_label)
            for n in needs] == [(first.id, "cap", "cap:m", 3.0, 4.0, False, "queued"),
                                (second.id, "cap", "cap:n", 0.0 + 1.0, 2.0, True, "queued")]
    assert backend.relabel(first.id, "waiting: no live host serves 'cap' now")
    assert backend.get(first.id).progress_label == "waiting: no live host serves 'cap' now"
    backend.claim(claimer())
    assert not backend.relabel(first.id, "queued")  # running now: not a queued job's label
    assert [n.job_id for n in backend.queued_needs(10)] == [second.id]


def test_release_gives_the_job_back_without_counting_an_attempt(backend):
    job = submit(backend)
    claim = backend.claim(claimer())
    backend.release(job.id, "h1", claim.attempt, "waiting for memory: h1 cannot free 3.00 GiB now")
    back = backend.get(job.id)
    assert back.status is JobStatus.queued and back.progress_label.startswith("waiting for memory: h1")
    assert backend.claim(claimer(host="h2")).attempt == 1
    with pytest.raises(Fenced):
        backend.release(job.id, "h1", 1)


def test_cancel_and_remove(backend):
    queued, running = submit(backend), submit(backend)
    backend.claim(claimer())  # takes `queued` (FIFO)
    job = backend.cancel(running.id)
    assert job.status is JobStatus.canceled and backend.error_of(running.id).code == "canceled"
    assert backend.cancel(queued.id).status is JobStatus.running and backend.cancel_requested(queued.id)
    assert backend.cancel(new_job_id()) is None
    last, was_running = backend.remove(queued.id)
    assert was_running and last.id == queued.id and backend.get(queued.id) is None
    assert not backend.renew(queued.id, "h1", 1, 30.0)
    assert backend.remove(queued.id) is None


def test_prune_keeps_active_jobs_and_the_newest_finished(backend):
    active = submit(backend)
    done = [submit(backend) for _ in range(3)]
    for job in done:
        backend.cancel(job.id)
    assert sorted(backend.prune(ttl_s=0, max_jobs=1)) == sorted(j.id for j in done[:2])
    assert backend.get(active.id) is not None and backend.get(done[2].id) is not None


def test_host_registry(backend):
    backend.heartbeat(HostState(id="a", url="http://127.0.0.1:1", capabilities=["cap"], budget_gb=8.0))
    backend.heartbeat(HostState(id="b", draining=True))
    hosts = backend.hosts(live_s=5.0)
    assert [h.id for h in hosts] == ["a", "b"] and hosts[0].live and hosts[0].heartbeat_age_s < 5
    assert msgspec.to_builtins(hosts[0])["url"] == "http://127.0.0.1:1" and hosts[1].draining
    assert not backend.hosts(live_s=-1.0)[0].live
    backend.leave("a")
    assert [h.id for h in backend.hosts(live_s=5.0)] == ["b"]


def test_event_bus_carries_job_cancel_and_work(backend, request):
    if isinstance(backend, LocalJobBackend):
        bus = backend._bus
    else:
        from kiapi_core.cluster.pg import PgEventBus

        bus = PgEventBus(backend.pool.url)
    heard: list[tuple[str, str]] = []
    got = threading.Event()

    def note(kind):
        def receive(job_id=""):
            heard.append((kind, job_id))
            got.set()
        return receive

    bus.on_job, bus.on_cancel, bus.on_work = note("job"), note("cancel"), note("work")
    bus.start()
    try:
        if hasattr(bus, "wait_connected"):
            assert bus.wait_connected(10.0)
        job = submit(backend)
        backend.claim(claimer())
        backend.cancel(job.id)
        deadline = time.monotonic() + 10
        while ("cancel", job.id) not in heard:
            assert time.monotonic() < deadline, heard
            got.wait(0.1)
            got.clear()
        assert ("job", job.id) in heard and ("work", "") in heard
    finally:
        bus.close()


def test_the_listener_reconnects_and_resyncs_after_losing_its_connection(pg_url):
    import psycopg

    from kiapi_core.cluster.pg import PgEventBus

    bus = PgEventBus(pg_url)
    resynced, heard = threading.Event(), threading.Event()
    bus.on_resync = resynced.set
    bus.on_job = lambda job_id: heard.set()
    bus.start()
    try:
        assert bus.wait_connected(10.0)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'kiapi-bus'")
        assert resynced.wait(10.0)
        deadline = time.monotonic() + 10
        while not heard.is_set():  # listening again
            assert time.monotonic() < deadline
            bus.job_changed("job_x")
            heard.wait(0.2)
    finally:
        bus.close()
