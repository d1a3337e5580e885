"""The job manager: a bounded FIFO queue, one model worker thread, cancel, watch, graceful stop.

Threads: routes call the manager on the event loop; the worker thread changes running jobs. One
``threading.Lock`` guards the queue (:mod:`.queue`), the live records and the store, so a job is
always in exactly one place (queued, or held by the worker) and a cancel can never race a start.
Waiters live on the event loop (see :mod:`.watch`): a change wakes the armed ones there with one
``loop.call_soon_threadsafe``, and they re-read the record under the lock when they wake.
Listeners hear of changes after the lock is let go (:mod:`.events`).

Records handed out are copies, so callers may encode them outside the lock.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any

from ..errors import Conflict, KiapiError, NotFound, QueueFull, Unavailable, error_from_code
from ..files.models import StoredFile
from ..registry import Capability, Model, Operation
from ..settings import Settings
from . import scheduler, watch
from .events import JobEvents, Listener, snapshot
from .models import Job, JobStatus
from .pool import LightPool
from .queue import ModelQueue
from .services import JobServices
from .store import IdempotentReplay, JobPage, JobStore, MemoryJobStore, idempotent_job
from .worker import AdminTask, Outcome, Pending, Worker

log = logging.getLogger("kiapi.jobs")

#: How long ``stop`` waits for a running job to honour its cancel after the grace period.
CANCEL_WAIT_S = 10.0


def new_job_id() -> str:
    return "job_" + uuid.uuid4().hex


class JobManager:
    def __init__(self, *, settings: Settings, services: JobServices, store: JobStore | None = None) -> None:
        self.settings = settings
        self._files = services.files
        self.max_queue = settings.max_queue
        self.store = store if store is not None else MemoryJobStore(ttl_s=settings.job_ttl_s, max_jobs=settings.max_jobs)
        self._worker = Worker(board=self, services=services)
        fairness = scheduler.Fairness(enabled=getattr(settings, "queue_model_affinity", True),
                                      max_bypass=getattr(settings, "queue_max_bypass", 4),
                                      max_bypass_s=getattr(settings, "queue_max_bypass_s", 60.0))
        self._queue = ModelQueue(fairness=fairness, needs_eviction=getattr(services.models, "needs_eviction", None),
                                 save=lambda job: self.store.save(job))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Operations declared uses_mlx=False run on the light pool, never behind the model thread.
        self._pool = LightPool(self, self._lock, size=settings.pool_workers, services=services)
        self._tasks: collections.deque[AdminTask] = collections.deque()  # run before queued jobs
        self._active: dict[str, Pending] = {}   # queued and running
        self._pinned: dict[str, list[str]] = {}  # job id -> input files kept until it ends
        self._running: Pending | None = None
        self._errors: dict[str, KiapiError] = {}  # failed/canceled job id -> answer for sync callers
        self._accepting = True
        self._exit = False
        self._totals = {"submitted": 0, "succeeded": 0, "failed": 0, "canceled": 0}
        self._avg_run_s: float | None = None
        self._watchers = watch.Watchers()
        self._exited: asyncio.Event | None = None
        self._events = JobEvents()
        #: ``listener(event, job)`` for ``queued``, ``started``, ``progress`` and ``finished``
        #: (metrics, lifecycle logs, webhooks), in order, on any thread, after the manager let go
        #: of its lock: a listener must be quick, must not block and must not call the manager.
        self.listeners: list[Listener] = self._events.listeners

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker thread; waiters will be woken on the running loop."""
        self._watchers.bind(asyncio.get_running_loop())
        self._exited = asyncio.Event()

        cut_off = await asyncio.to_thread(self._locked, self.store.open)  # these end failed
        for job in cut_off or ():
            self._events.record("finished", job)
        self._events.deliver()
        self._worker.start()
        self._pool.start()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, cancel queued jobs, give the running one ``grace_s``, then cancel it.

        Every job ends terminal, so sync callers and watchers get an answer before the server
        goes away. Then the store is closed (records stay readable in memory)."""
        try:
            await self._stop(grace_s)
            await self._pool.stop(CANCEL_WAIT_S)
            await asyncio.to_thread(self._events.flush, CANCEL_WAIT_S)
        finally:
            with self._lock:
                self.store.close()

    async def _stop(self, grace_s: float | None) -> None:
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        with self._lock:
            self._accepting = False
            self._exit = True
            dropped, tasks = [*self._queue, *self._pool.drain()], list(self._tasks)
            self._queue.clear()
            self._tasks.clear()
            for task in tasks:
                task.settle(None, Unavailable("the server is shutting down", code="shutting_down"))
            for pending in dropped:
                self._terminate(pending.job, Outcome.of(JobStatus.canceled, Unavailable(
                    "the server shut down before the job started; submit it again",
                    code="shutting_down")))
            self._cond.notify_all()
        self._publish(*(p.job.id for p in dropped), final=True)
        if not self._worker.is_alive() or self._exited is None:
            return
        if await self._wait_exit(grace):
            return
        with self._lock:
            running = self._running
        if running is not None:
            log.warning("job %s still running after %.0f s of grace; canceling it", running.job.id, grace)
            running.cancel_reason = Unavailable(
                f"the server shut down; the job was canceled after the {grace:g} s grace period "
                "(KIAPI_SHUTDOWN_GRACE_S); submit it again", code="shutting_down")
            running.cancel.set()
        if await self._wait_exit(CANCEL_WAIT_S):
            return
        with self._lock:
            running = self._running
            if running is not None and not running.job.status.terminal:
                # The handler ignores cancellation; answer its waiters anyway. The daemon thread
                # dies with the process; finish() will not overwrite this state.
                self._terminate(running.job, Outcome.of(JobStatus.failed, Unavailable(
                    "the server shut down while the job was running", code="shutting_down")))
        if running is not None:
            log.error("job %s did not stop when canceled; abandoning it", running.job.id)
            self._publish(running.job.id, final=True)

    async def _wait_exit(self, timeout: float) -> bool:
        assert self._exited is not None
        try:
            await asyncio.wait_for(self._exited.wait(), max(timeout, 0.0))
        except TimeoutError:
            return False
        # The thread signalled from its last statement; joining takes a moment at most.
        self._worker.join(timeout=1.0)
        return True

    # --- submit -----------------------------------------------------------------------------
    def submit(self, *, capability: Capability, operation: Operation, model: Model, request: Any,
               params: dict[str, Any], inputs: Mapping[str, StoredFile], input_ids: Mapping[str, str],
               warnings: list[str], estimate_gb: float | None,
               idempotency: tuple[str, str] | None = None) -> Job:
        """Queue a job (call on the event loop). Raises QueueFull / Unavailable (503).

        ``idempotency`` is ``(scoped key, request fingerprint)``: when a kept job has the key,
        raises :class:`IdempotentReplay` with it (same fingerprint) or Conflict (409)."""
        job = Job(type=operation.job_type, params=params, id=new_job_id(), created_at=time.time(),
                  capability=capability.name, model=model.name, inputs=dict(input_ids),
                  warnings=list(warnings),
                  metrics={} if estimate_gb is None else {"admitted_gb": round(estimate_gb, 4)})
        pending = Pending(job=job, capability=capability, operation=operation, model=model,
                          request=request, inputs=inputs)
        with self._lock:
            if idempotency is not None:
                existing = self._idempotent(*idempotency)
                if existing is not None:
                    raise IdempotentReplay(existing)
            queue = self._queue if operation.uses_mlx else self._pool.queue
            self._check_capacity(queue)
            job.queue_position = len(queue)
            queue.append(pending)
            self._active[job.id] = pending
            self._pin_inputs(job.id, inputs)
            self._totals["submitted"] += 1
            self.store.add(job, idempotency)
            moved = self._queue.renumber() if queue is self._queue and self._queue.mixed() else []
            self._events.record("queued", job)
            self._prune()
            if queue is self._queue:
                self._cond.notify()
            else:
                self._pool.ensure_threads()
                self._pool.cond.notify()
            result = snapshot(job)
        self._publish(*moved)
        return result

    @property
    def accepting(self) -> bool:
        """False once shutdown began: no new jobs, and no new uploads either."""
        return self._accepting

    def check_capacity(self) -> None:
        """Raise the 503 :meth:`submit` would raise now (shutting down, queue full), so that a
        request is refused before its inputs are downloaded and checked."""
        with self._lock:
            self._check_capacity()

    def _check_capacity(self, queue: ModelQueue | collections.deque[Pending] | None = None) -> None:
        if not self._accepting:
            raise Unavailable("the server is shutting down and takes no new jobs",
                              code="shutting_down", headers={"Retry-After": "30"})
        if len(self._queue if queue is None else queue) >= self.max_queue:
            wait = self._retry_after()
            raise QueueFull(
                f"the job queue is full ({self.max_queue} jobs waiting); retry in about {wait} s",
                headers={"Retry-After": str(wait)}, max_queue=self.max_queue)

    async def run_on_worker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model thread, between jobs and ahead of queued ones; its result or
        exception comes back here. For model work that is no job (warmup, admin load/unload)."""
        task = AdminTask(fn, asyncio.get_running_loop())
        with self._lock:
            if not self._accepting:
                raise Unavailable("the server is shutting down", code="shutting_down")
            self._tasks.append(task)
            self._cond.notify()
        return await task.future

    def _retry_after(self) -> int:
        """A slot frees when the running job ends: about one average run."""
        average = self._avg_run_s if self._avg_run_s is not None else 10.0
        return int(min(max(math.ceil(average), 1), 600))

    # --- reading ----------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        with self._lock:
            return snapshot(self._get(job_id))

    def _get(self, job_id: str) -> Job:
        pending = self._active.get(job_id)
        job = pending.job if pending is not None else self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}; finished jobs are kept for "
                           f"{self.settings.job_ttl_s:g} s and at most {self.settings.max_jobs}")
        return job

    def find_idempotent(self, key: str, fingerprint: str) -> Job | None:
        """The kept job of idempotency ``key``; Conflict (409) if its request differed."""
        with self._lock:
            return self._idempotent(key, fingerprint)

    def _idempotent(self, key: str, fingerprint: str) -> Job | None:
        job = idempotent_job(self.store, key, fingerprint)
        return None if job is None else snapshot(job)

    def list_jobs(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
                  limit: int = 50, after: str | None = None) -> JobPage:
        with self._lock:
            self._prune()
            page = self.store.page(status=status, type=type, limit=limit, after=after)
            return JobPage([snapshot(j) for j in page.jobs], page.has_more)

    def error_of(self, job_id: str) -> KiapiError | None:
        """The error to answer a sync caller of a failed or canceled job with, else ``None``."""
        with self._lock:
            job = self._get(job_id)
            if job.status is JobStatus.failed:
                # After a restart only the record is left: its code gives back the status.
                return self._errors.get(job_id) or error_from_code(job.error_code, job.error or "the job failed")
            if job.status is JobStatus.canceled:
                return self._errors.get(job_id) or Conflict(f"job {job_id} was canceled", code="canceled")
            return None

    def stats(self) -> dict[str, Any]:
        """For ``/health``."""
        with self._lock:
            running = self._running.job if self._running is not None else None
            return {
                "accepting": self._accepting,
                "queued": len(self._queue),
                "max_queue": self.max_queue,
                "running": None if running is None else {
                    "id": running.id, "type": running.type, "progress": running.progress,
                    "progress_label": running.progress_label, "started_at": running.started_at},
                "kept": len(self.store),
                "totals": dict(self._totals),
                "worker_alive": self._worker.is_alive(),
                "pool": self._pool.stats(),
            }

    def prune_expired(self) -> None:
        """Forget finished jobs past KIAPI_JOB_TTL_S / KIAPI_MAX_JOBS now (the storage sweep
        calls it, so an idle server lets go of old jobs and then of their outputs)."""
        with self._lock:
            self._prune()

    def status_of(self, job_id: str) -> str | None:
        """The status of a kept job, ``None`` when it is not kept (any thread)."""
        with self._lock:
            pending = self._active.get(job_id)
            job = pending.job if pending is not None else self.store.get(job_id)
            return None if job is None else job.status.value

    # --- cancel and delete ------------------------------------------------------------------
    def cancel(self, job_id: str) -> Job:
        """Cancel: queued → ``canceled`` now, never runs; running → flagged, ends ``canceled`` at
        its next check; finished → unchanged (cancel is idempotent)."""
        with self._lock:
            job = self._cancel(job_id)
            result, ids = snapshot(job), self._queue.ids()
        self._publish(*ids)
        self._publish(job_id, final=True)
        return result

    def _cancel(self, job_id: str) -> Job:
        job = self._get(job_id)
        pending = self._active.get(job_id)
        if pending is None or job.status.terminal:
            return job
        if job.status is JobStatus.queued:
            (self._queue if pending in self._queue else self._pool.queue).remove(pending)
            self._terminate(job, Outcome(JobStatus.canceled))
            self._queue.renumber()
            self._pool.renumber()
        else:
            pending.cancel.set()
            log.info("job %s: cancel requested while running", job_id)
        return job

    def delete(self, job_id: str) -> tuple[Job, bool]:
        """Cancel if active, then forget the record. Returns ``(last state, was_running)``."""
        with self._lock:
            job = self._cancel(job_id)
            was_running = job.status is JobStatus.running
            result = snapshot(job)
            # A running job keeps running until its next check, but is no longer served.
            self._active.pop(job_id, None)
            self.store.remove(job_id)
            self._errors.pop(job_id, None)
            ids = self._queue.ids()
        self._publish(*ids)
        self._publish(job_id, final=True)
        return result, was_running

    # --- waiting (event loop) ---------------------------------------------------------------
    async def wait(self, job_id: str, timeout: float) -> Job:
        """The job once terminal, or as it is after ``timeout`` seconds. NotFound if deleted."""
        return await watch.wait(self.get, self._watchers, job_id, timeout)

    async def wait_change(self, job_id: str, timeout: float, since: Job | None = None) -> Job:
        """The job once it differs from ``since`` (default: now) or ``timeout`` passes."""
        return await watch.wait_change(self.get, self._watchers, job_id, timeout, since)

    def events(self, job_id: str, keepalive_s: float = 15.0) -> AsyncIterator[Job | None]:
        """Snapshots on every change, then the terminal state; ``None`` as a keepalive tick."""
        return watch.events(self.get, self._watchers, job_id, keepalive_s)

    # --- worker board (worker thread) ----------------------------------------------------------
    def next_job(self) -> Pending | AdminTask | None:
        with self._lock:
            while not self._queue and not self._tasks and not self._exit:
                self._cond.wait()
            if self._exit:
                return None
            if self._tasks:
                return self._tasks.popleft()
            pending = self._queue.take()
            job = pending.job
            job.status = JobStatus.running
            job.started_at = time.time()
            job.progress = 0.0
            job.progress_label = "running"
            job.queue_position = None
            self._running = pending
            moved = self._queue.renumber()
            self.store.save(job)
            self._events.record("started", job)
        self._publish(job.id, *moved)  # only the jobs whose position changed
        return pending

    def mutate(self, job: Job, change: Callable[[Job], None]) -> None:
        with self._lock:
            if job.status.terminal:
                return  # abandoned at shutdown: keep the answer already given
            before = (job.progress, job.progress_label)
            change(job)
            self.store.save(job)
            if (job.progress, job.progress_label) != before:
                self._events.record("progress", job)
        self._publish(job.id)

    def finish(self, pending: Pending, outcome: Outcome, metrics: Mapping[str, Any]) -> None:
        job = pending.job
        self._unpin_inputs(job.id)
        with self._lock:
            if self._running is pending:
                self._running = None
            self._pool.running.discard(job.id)
            self._active.pop(job.id, None)
            job.metrics.update(metrics)
            if outcome.status is JobStatus.canceled and pending.cancel_reason is not None:
                outcome = Outcome.of(JobStatus.canceled, pending.cancel_reason)
            if not job.status.terminal:  # else abandoned at shutdown: keep the answer given
                self._terminate(job, outcome)
                took = (job.finished_at or 0.0) - (job.started_at or 0.0)
                self._avg_run_s = took if self._avg_run_s is None else 0.8 * self._avg_run_s + 0.2 * took
            self.store.save(job)
            self._prune()
        # Committed before anyone hears of the end (outside the lock: the loop never waits on
        # it), so an answered job survives kill -9; other changes are written behind.
        self.store.flush()
        self._publish(job.id, final=True)

    def next_pool_job(self) -> Pending | None:
        """For the pool threads: block until a pool job is queued (marked running), ``None`` to exit."""
        with self._lock:
            pending = self._pool.take(lambda: self._exit)
            ids = [] if pending is None else [pending.job.id, *self._pool.renumber()]
        self._publish(*ids)
        return pending

    def active_pending(self) -> list[Pending]:
        """Queued and running jobs (lock held by the caller)."""
        return list(self._active.values())

    def terminate_stuck(self, stuck: list[Pending], reason: KiapiError) -> None:
        """End jobs whose handler ignored a shutdown cancel, so their waiters get an answer."""
        with self._lock:
            for pending in stuck:
                if not pending.job.status.terminal:
                    self._terminate(pending.job, Outcome.of(JobStatus.failed, reason))
        self._publish(*(p.job.id for p in stuck))

    def worker_exited(self) -> None:
        loop, exited = self._watchers.loop, self._exited
        if loop is not None and exited is not None:
            try:
                loop.call_soon_threadsafe(exited.set)
            except RuntimeError:
                pass

    # --- helpers (lock held) -------------------------------------------------------------------
    def _pin_inputs(self, job_id: str, inputs: Mapping[str, StoredFile]) -> None:
        ids = sorted({stored.file_id for stored in inputs.values()})
        pin = getattr(self._files, "pin", None)
        if ids and pin is not None:
            pin(ids)
            self._pinned[job_id] = ids

    def _unpin_inputs(self, job_id: str) -> None:
        ids = self._pinned.pop(job_id, None)
        unpin = getattr(self._files, "unpin", None)  # like pin: not every FileSink pins
        if ids and unpin is not None:
            unpin(ids)

    def _terminate(self, job: Job, outcome: Outcome) -> None:
        """Make a job terminal: at the worker's end, on a queued cancel, or at shutdown."""
        if job.started_at is None:  # never ran: nothing reads its inputs any more
            self._unpin_inputs(job.id)
        job.status, job.finished_at, job.queue_position = outcome.status, time.time(), None
        if outcome.status is JobStatus.succeeded:
            job.result, job.progress, job.progress_label = outcome.result, 1.0, "done"
        else:
            job.progress_label = outcome.status.value
            job.error, job.error_code = outcome.error, outcome.error_code
            if outcome.exc is not None:
                self._errors[job.id] = outcome.exc
        self._active.pop(job.id, None)
        self._totals[outcome.status.value] += 1
        self.store.save(job)
        self._events.record("finished", job)

    def _publish(self, *job_ids: str, final: bool = False) -> None:
        """After a change (lock let go): wake the waiters of ``job_ids``, then tell the listeners."""
        self._watchers.notify(*job_ids, final=final)
        self._events.deliver()

    def _locked(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            return fn()

    def _prune(self) -> None:
        for job_id in self.store.prune():
            self._errors.pop(job_id, None)


__all__ = ["IdempotentReplay", "JobManager", "JobServices", "new_job_id", "snapshot"]
