"""ClusterJobManager: the job manager's API on a shared backend (same methods as
:class:`~kiapi_core.jobs.manager.JobManager`, plus ``a*`` coroutines that keep database calls
off the event loop).

Records, the queue and errors live in the backend, so any host answers status, progress, SSE,
cancel and delete for any job. Waiters sit on this host's event loop; they are woken by the
event bus (a job changed anywhere) and re-read the record, so a lost notification costs at most
one keepalive period, and a reconnect wakes everyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any

import msgspec

from .. import __version__
from ..errors import Conflict, KiapiError, NotFound, Unavailable, error_from_code
from ..files.models import StoredFile
from ..jobs import watch
from ..jobs.manager import new_job_id
from ..jobs.models import Job, JobStatus
from ..jobs.pool import PoolBoard, PoolModels
from ..jobs.store import JobPage, idempotent_job
from ..jobs.worker import AdminTask, JobServices, Worker
from ..memory.admission import declared_weights_gb, job_quantize
from ..memory.loaders import raw_estimate
from ..registry import Capability, Model, Operation
from .interfaces import EventBus, HostState, JobBackend, Submission
from .runner import ClusterRunner

log = logging.getLogger("kiapi.cluster")
#: Seconds between reads of a watched job while the database is unreachable.
OUTAGE_RETRY_S = 1.0


class _KeyLookup:
    """Adapts the backend to :func:`idempotent_job`."""

    def __init__(self, backend: JobBackend) -> None:
        self.by_idempotency_key = backend.find_idempotent


class ClusterJobManager:
    def __init__(self, *, settings: Any, backend: JobBackend, bus: EventBus, registry: Any,
                 services: JobServices) -> None:
        files, models = services.files, services.models
        self.settings = settings
        self.max_queue = settings.max_queue
        self.backend = backend
        self.bus = bus
        self.host_id = settings.cluster_host_id or f"{socket.gethostname()}-{settings.port}"
        self._registry = registry
        self._models = models
        self._watchers = watch.Watchers()
        self._watched: dict[str, int] = {}  # job id -> armed waiters (a reconnect wakes them)
        self._accepting = True
        self._started_at = time.time()
        #: ``listener(event, job)`` for ``queued`` (submitted here), ``started``, ``progress`` and
        #: ``finished`` (run, canceled or reaped here): metrics, lifecycle logs and webhooks, as
        #: on one host. Webhooks reach the submitter's subscription through the shared store.
        self.listeners: list[Callable[[str, Job], None]] = []
        #: The webhook store all hosts share (set by :func:`~kiapi_core.cluster.setup.cluster_services`).
        self.webhook_store: Any = None
        self.runner = ClusterRunner(backend=backend, host_id=self.host_id, settings=settings, registry=registry,
                                    files=files, models=models, host_state=self.host_state, notify=self._wake,
                                    emit=self._emit)
        self._worker = Worker(board=self.runner, services=services)
        self._pool_models = PoolModels(plugin_settings=services.plugin_settings, cache_dir=services.cache_dir,
                                       demo=services.demo)
        pool_services = dataclasses.replace(services, models=self._pool_models)
        #: Operations that use no MLX run on these threads, never behind the model thread (as on
        #: one host, jobs/pool.py); a host with no such operation, or taking no work, has none.
        light = any(not op.uses_mlx for capability in registry for op in capability.operations)
        self._pool_workers = [
            Worker(board=PoolBoard(self.runner), services=pool_services)
            for _ in range(settings.pool_workers if light and settings.role != "api" else 0)]
        bus.on_job = self._wake
        bus.on_cancel = self.runner.cancel_requested
        bus.on_work = self.runner.work_available
        bus.on_resync = lambda: self._wake(*list(self._watched))  # notifications may have been lost

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await asyncio.to_thread(self.backend.prepare)
        self._watchers.bind(asyncio.get_running_loop())
        self.bus.start()
        await asyncio.to_thread(self.runner.pulse_once)  # registered before the first claim
        self.runner.start()
        self._worker.start()
        for index, worker in enumerate(self._pool_workers):
            worker.name = f"kiapi-pool-{index}"
            worker.start()
        log.info("cluster: host %s (role %s) joined", self.host_id, self.settings.role)

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: claim nothing more, let the running job finish for ``grace_s``, then give it
        back to the cluster's queue (another host runs it). Queued jobs stay queued."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        self._accepting = False
        self.runner.claiming = False
        await asyncio.to_thread(self.runner.pulse_once)  # others see "draining" now
        deadline = time.monotonic() + grace
        while self.runner.runs() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run in self.runner.runs():
            log.warning("job %s still running after %.0f s of grace; handing it back", run.pending.job.id, grace)
            run.handback = True
            run.pending.cancel.set()
        end = time.monotonic() + 10.0
        while self.runner.runs() and time.monotonic() < end:
            await asyncio.sleep(0.05)
        for task in self.runner.exit():
            task.settle(None, Unavailable("the server is shutting down", code="shutting_down"))
        self.runner.stop_threads()
        await asyncio.to_thread(self._pool_models.close)
        await asyncio.to_thread(self.backend.leave, self.host_id)
        self.bus.close()
        self.backend.close()

    def host_state(self) -> HostState:
        stats = self._models.stats() if hasattr(self._models, "stats") else {}
        resident = sorted({f"{row['family']}:{row['model']}" for row in stats.get("resident", [])})
        run = self.runner.run
        return HostState(
            id=self.host_id, url=self.settings.cluster_advertise_url
            or f"http://{self.settings.host}:{self.settings.port}", role=self.settings.role,
            capabilities=[] if self.settings.role == "api" else [c.name for c in self._registry],
            resident=resident, budget_gb=float(stats.get("budget_gb", 0.0)),
            free_gb=float(stats.get("free_gb", 0.0)), running_job=None if run is None else run.pending.job.id,
            draining=not self.runner.claiming and self.settings.role != "api", version=__version__,
            started_at=self._started_at)

    # --- submit ---------------------------------------------------------------------------
    def submit(self, *, capability: Capability, operation: Operation, model: Model, request: Any,
               params: dict[str, Any], inputs: Mapping[str, StoredFile], input_ids: Mapping[str, str],
               warnings: list[str], estimate_gb: float | None,
               idempotency: tuple[str, str] | None = None) -> Job:
        self.check_capacity()
        job = Job(type=operation.job_type, params=params, id=new_job_id(), created_at=time.time(),
                  capability=capability.name, model=model.name, inputs=dict(input_ids), warnings=list(warnings),
                  metrics={} if estimate_gb is None else {"admitted_gb": round(estimate_gb, 4)})
        load_gb = 0.0 if getattr(operation, "own_model", False) else declared_weights_gb(
            model, job_quantize(model, params))
        need_gb = max((estimate_gb or 0.0) - load_gb, 0.0)
        envelope = {"operation": operation.name, "body": msgspec.to_builtins(request),
                    "inputs": {field: stored.file_id for field, stored in inputs.items()}}
        self._check_fits(capability, need_gb + load_gb)
        queued = self.backend.submit(Submission(
            job, msgspec.json.encode(envelope), need_gb, load_gb, idempotency, light=not operation.uses_mlx,
            pins=tuple(sorted({stored.file_id for stored in inputs.values()}))), max_queue=self.max_queue)
        self._emit("queued", queued)
        return queued

    def _check_fits(self, capability: Capability, needed_gb: float) -> None:
        """Can it ever fit? Against the largest live host serving the capability."""
        hosts = [h for h in self.runner.hosts_cache if h.live and not h.draining and capability.name in h.capabilities]
        if not hosts:
            raise Unavailable(f"no live host in the cluster serves {capability.name!r} now; start a worker "
                              "for it or retry later", code="no_host", headers={"Retry-After": "10"})
        largest = max(h.budget_gb for h in hosts)
        if needed_gb > largest:
            raise Unavailable(f"the job needs about {needed_gb:.1f} GiB, more than the largest host serving "
                              f"{capability.name!r} has ({largest:.1f} GiB)", code="memory_budget")

    def admit(self, capability: Capability, model: Model, operation: Operation, params: Mapping[str, Any]) -> float:
        """The request path's memory check in a cluster (instead of this host's budget): the GB
        the job needs (its peak plus its model's weights), refused when no live host serving
        the capability could ever hold it."""
        load_gb = 0.0 if getattr(operation, "own_model", False) else declared_weights_gb(
            model, job_quantize(model, params))
        needed = raw_estimate(operation, params, model) + load_gb
        self._check_fits(capability, needed)
        return needed

    @property
    def accepting(self) -> bool:
        return self._accepting

    def check_capacity(self) -> None:
        if self.settings.role == "worker":
            raise Unavailable("this host is a cluster worker (KIAPI_ROLE=worker): it runs jobs but takes "
                              "none; submit to a host with KIAPI_ROLE=all or api (GET /v1/cluster/hosts)",
                              code="role_worker")
        if not self._accepting:
            raise Unavailable("the server is shutting down and takes no new jobs", code="shutting_down",
                              headers={"Retry-After": "30"})

    async def run_on_worker(self, fn: Callable[[], Any]) -> Any:
        if not self._accepting:
            raise Unavailable("the server is shutting down", code="shutting_down")
        task = AdminTask(fn, asyncio.get_running_loop())
        self.runner.add_task(task)
        return await task.future

    # --- reading ----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        job = self.backend.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}; finished jobs are kept for {self.settings.job_ttl_s:g} s "
                           f"and at most {self.settings.max_jobs}")
        return job

    def find_idempotent(self, key: str, fingerprint: str) -> Job | None:
        return idempotent_job(_KeyLookup(self.backend), key, fingerprint)  # type: ignore[arg-type]

    def list_jobs(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
                  limit: int = 50, after: str | None = None) -> JobPage:
        self.backend.prune(ttl_s=self.settings.job_ttl_s, max_jobs=self.settings.max_jobs)
        return self.backend.page(status=status, type=type, limit=limit, after=after)

    def error_of(self, job_id: str) -> KiapiError | None:
        job = self.get(job_id)
        if not job.status.terminal or job.status is JobStatus.succeeded:
            return None
        known = self.backend.error_of(job_id)
        if known is not None:
            error = KiapiError(known.detail, code=known.code)
            error.status = known.status
            return error
        if job.status is JobStatus.canceled:
            return Conflict(f"job {job_id} was canceled", code="canceled")
        return error_from_code(job.error_code, job.error or "the job failed")

    def status_of(self, job_id: str) -> str | None:
        """The status of a kept job, ``None`` when it is not kept (any thread but the loop)."""
        job = self.backend.get(job_id)
        return None if job is None else job.status.value

    def prune_expired(self) -> None:
        self.backend.prune(ttl_s=self.settings.job_ttl_s, max_jobs=self.settings.max_jobs)

    def stats(self) -> dict[str, Any]:
        run = self.runner.run
        running = None if run is None else run.pending.job
        return {"accepting": self._accepting, "queued": self.runner.queued, "max_queue": self.max_queue,
                "running": None if running is None else {
                    "id": running.id, "type": running.type, "progress": running.progress,
                    "progress_label": running.progress_label, "started_at": running.started_at},
                "worker_alive": self._worker.is_alive(),
                "pool": {"workers": len(self._pool_workers), "running": len(self.runner.light_runs)},
                "cluster": {"host_id": self.host_id, "role": self.settings.role,
                            "database": self._database_state()}}

    def _database_state(self) -> dict[str, Any]:
        since = self.runner.db_failing_since
        if since is None:
            return {"reachable": True}
        return {"reachable": False, "error": self.runner.db_error, "since_s": round(time.time() - since, 1)}

    def problems(self) -> list[str]:
        """What makes this host degraded now (``/health``): the database out of reach."""
        since = self.runner.db_failing_since
        if since is None:
            return []
        return [f"the cluster database has been unreachable for {time.time() - since:.0f} s "
                f"({self.runner.db_error}); new jobs, file uploads and job reads answer 503 until it is "
                f"back, and a running job is stopped once its lease ({self.runner.lease_s:g} s) runs out "
                "(it is run again when the database returns)"]

    # --- cancel and delete ------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        before = self.backend.get(job_id)
        job = self.backend.cancel(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        if before is not None and before.status is JobStatus.queued and job.status is JobStatus.canceled:
            self._emit("finished", job)
        self.runner.cancel_requested(job_id) if job.status is JobStatus.running else None
        self._wake(job_id)
        return job

    def delete(self, job_id: str) -> tuple[Job, bool]:
        found = self.backend.remove(job_id)
        if found is None:
            raise NotFound(f"no job {job_id}")
        if found[1]:
            self.runner.cancel_requested(job_id)
        self._wake(job_id)
        return found

    # --- async API (event loop): database calls in threads -------------------------------------
    async def aget(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.get, job_id)

    async def asubmit(self, **kwargs: Any) -> Job:
        return await asyncio.to_thread(lambda: self.submit(**kwargs))

    async def afind_idempotent(self, key: str, fingerprint: str) -> Job | None:
        return await asyncio.to_thread(self.find_idempotent, key, fingerprint)

    async def alist_jobs(self, **kwargs: Any) -> JobPage:
        return await asyncio.to_thread(lambda: self.list_jobs(**kwargs))

    async def aerror_of(self, job_id: str) -> KiapiError | None:
        return await asyncio.to_thread(self.error_of, job_id)

    async def acancel(self, job_id: str) -> Job:
        return await asyncio.to_thread(self.cancel, job_id)

    async def adelete(self, job_id: str) -> tuple[Job, bool]:
        return await asyncio.to_thread(self.delete, job_id)

    async def ahosts(self) -> list[HostState]:
        return await asyncio.to_thread(self.backend.hosts, live_s=self.runner.lease_s)

    # --- waiting (event loop) ---------------------------------------------------------------
    def _wake(self, *job_ids: str) -> None:
        self._watchers.notify(*job_ids, final=True)  # ids only: any change may be the end

    def _emit(self, event: str, job: Job) -> None:
        if not self.listeners:
            return
        copy = msgspec.structs.replace(job, artifacts=list(job.artifacts), warnings=list(job.warnings),
                                       metrics=dict(job.metrics))
        for listener in self.listeners:
            try:
                listener(event, copy)
            except Exception:  # an observer must never break a job
                log.exception("job listener %r failed on %s of %s", listener, event, job.id)

    async def wait(self, job_id: str, timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            async with self._armed(job_id) as woken:
                job = await self.aget(job_id)
                remaining = deadline - time.monotonic()
                if job.status.terminal or remaining <= 0:
                    return job
                await woken(min(remaining, self.runner.lease_s))

    async def wait_change(self, job_id: str, timeout: float, since: Job | None = None) -> Job:
        deadline = time.monotonic() + timeout
        base = watch.change_key(since if since is not None else await self.aget(job_id))
        while True:
            async with self._armed(job_id) as woken:
                job = await self.aget(job_id)
                remaining = deadline - time.monotonic()
                if watch.change_key(job) != base or job.status.terminal or remaining <= 0:
                    return job
                await woken(min(remaining, self.runner.lease_s))

    async def events(self, job_id: str, keepalive_s: float = 15.0) -> AsyncIterator[Job | None]:
        """A job's changes for SSE; while the database is away the stream stays open (keepalives
        every OUTAGE_RETRY_S, read again each time) and goes on once it is back."""
        last: tuple[Any, ...] | None = None
        while True:
            async with self._armed(job_id) as woken:
                try:
                    job: Job | None = await self.aget(job_id)
                except NotFound:
                    if last is None:
                        raise
                    return
                except Unavailable:
                    if last is None:
                        raise
                    job = None
                if job is not None and watch.change_key(job) != last:
                    last = watch.change_key(job)
                    yield job
                if job is not None and job.status.terminal:
                    return
                woke = await woken(keepalive_s if job is not None else OUTAGE_RETRY_S)
            if not woke:
                yield None

    @contextlib.asynccontextmanager
    async def _armed(self, job_id: str) -> AsyncIterator[Callable[[float], Awaitable[bool]]]:
        """Armed before the record is read, so a change between the read and the wait is never
        missed; yields ``woken(timeout)``."""
        waiter = self._watchers.arm(job_id)
        self._watched[job_id] = self._watched.get(job_id, 0) + 1
        try:
            yield lambda timeout: self._watchers.woken(waiter, timeout)
        finally:
            self._watchers.disarm(job_id, waiter)
            left = self._watched.pop(job_id, 1) - 1
            if left > 0:
                self._watched[job_id] = left


__all__ = ["ClusterJobManager"]
