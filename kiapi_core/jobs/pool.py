"""The light pool: jobs of operations that never touch MLX, on threads of their own.

A 5 ms Pillow resize or JSON transform must not wait seconds behind a model job on the single
model thread. An :class:`~kiapi_core.registry.Operation` declared ``uses_mlx=False`` is queued
here instead: ``KIAPI_POOL_WORKERS`` threads (a bounded pool; its queue is bounded by
``KIAPI_MAX_QUEUE`` like the model queue) run such jobs with the same
:class:`~kiapi_core.jobs.worker.Worker` code, so cancellation, progress, artifacts and failure
handling are identical. The model thread stays single, for MLX.

What differs is the model source, :class:`PoolModels`: a pool job never evicts or loads MLX
models (that is the model thread's job), so its model's runtime (a resampling filter, a small
numpy/torch model) is loaded by the pool and kept per variant, outside the memory budget's
eviction, and each job is measured with its operation's memory backend (RSS by default for
``uses_mlx=False``). Pool jobs' memory is therefore *not reserved* against the budget: declare
``uses_mlx=False`` only for operations whose peak is small next to the budget.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import Unavailable
from ..memory.backends import MemoryBackend, backend_for_model
from ..memory.loaders import close_runtime, resolve_loader
from ..registry import Capability, Model, Operation
from .models import JobStatus
from .services import JobServices
from .worker import Pending, Worker

log = logging.getLogger("kiapi.jobs")
GIB = 2**30


class PoolModels:
    """Model runtimes and measurements for pool jobs (thread-safe)."""

    def __init__(self, *, plugin_settings: Callable[[str], Any], cache_dir: Callable[[str], Path],
                 demo: bool) -> None:
        self._plugin_settings = plugin_settings
        self._cache_dir = cache_dir
        self._demo = demo
        self._lock = threading.Lock()
        self._runtimes: dict[tuple[str, str, int | None], Any] = {}
        self._loading: dict[tuple[str, str, int | None], threading.Lock] = {}
        self._jobs: dict[str, tuple[MemoryBackend, int, list[Any]]] = {}

    def begin_job(self, job_id: str, capability: Capability, model: Model, operation: Operation,
                  params: Mapping[str, Any] | None = None) -> float:
        backend = backend_for_model(model, operation)
        backend.reset_peak()
        with self._lock:
            self._jobs[job_id] = (backend, backend.active_bytes(), [])
        return 0.0

    def acquire(self, job_id: str, capability: Capability, model: Model, quantize: Any = None,
                options: Mapping[str, Any] | None = None, on_loading: Callable[[], None] | None = None) -> Any:
        options = dict(options or {})
        if options:  # a one-off variant: built for this job, closed when it ends
            runtime = self._load(capability, model, quantize, options, on_loading)
            with self._lock:
                self._jobs[job_id][2].append(runtime)
            return runtime
        key = (capability.name, model.name, quantize)
        with self._lock:
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per variant, even when several pool jobs ask at once
            if key not in self._runtimes:
                self._runtimes[key] = self._load(capability, model, quantize, {}, on_loading)
            return self._runtimes[key]

    def end_job(self, job_id: str, *, succeeded: bool = True) -> dict[str, Any]:
        with self._lock:
            entry = self._jobs.pop(job_id, None)
        if entry is None:
            return {}
        backend, base, transients = entry
        for runtime in transients:
            close_runtime(runtime, f"transient of pool job {job_id}")
        peak = max(0, backend.peak_bytes() - base)
        return {"peak_gb": round(peak / GIB, 4), "memory_backend": backend.name, "pool": True}

    def close(self) -> None:
        with self._lock:
            runtimes, self._runtimes = list(self._runtimes.items()), {}
        for (family, name, _), runtime in runtimes:
            close_runtime(runtime, f"pool runtime {family}/{name}")

    def _load(self, capability: Capability, model: Model, quantize: Any, options: dict[str, Any],
              on_loading: Callable[[], None] | None) -> Any:
        loader = resolve_loader(model.loader)
        if loader is None:
            return None
        if on_loading is not None:
            on_loading()
        return loader(model=model, quantize=quantize, settings=self._plugin_settings(capability.name),
                      demo=self._demo, cache_dir=self._cache_dir(capability.name), **options)


class PoolBoard:
    """The board pool workers see: the manager's, except where jobs come from and that a pool
    thread's end is not the model thread's."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    def next_job(self) -> Pending | None:
        return self._manager.next_pool_job()

    def mutate(self, job: Any, change: Callable[[Any], None]) -> None:
        self._manager.mutate(job, change)

    def finish(self, pending: Pending, outcome: Any, metrics: Mapping[str, Any]) -> None:
        self._manager.finish(pending, outcome, metrics)

    def worker_exited(self) -> None:
        pass


class LightPool:
    """The pool's queue, threads and model source; its state is guarded by the job manager's
    lock (``cond`` is a condition on it), so queueing, cancel and stats stay consistent with
    the model queue."""

    def __init__(self, manager: Any, lock: threading.Lock, *, size: int, services: JobServices) -> None:
        self.cond = threading.Condition(lock)
        self.queue: collections.deque[Pending] = collections.deque()
        self.running: set[str] = set()
        self.models = PoolModels(plugin_settings=services.plugin_settings, cache_dir=services.cache_dir,
                                 demo=services.demo)
        self._manager = manager
        self._size = size
        pool_services = dataclasses.replace(services, models=self.models)
        self._make_worker = lambda: Worker(board=PoolBoard(manager), services=pool_services)
        self.workers: list[Worker] = []
        self._started = False

    def start(self) -> None:
        """Allow the threads to start: they do with the first pool job (a host serving only
        model operations never starts them)."""
        self._started = True

    def ensure_threads(self) -> None:
        """Start the threads if the host started and they are not running yet (lock held)."""
        if not self._started or self.workers:
            return
        for index in range(self._size):
            worker = self._make_worker()
            worker.name = f"kiapi-pool-{index}"
            worker.start()
            self.workers.append(worker)

    # --- lock held -----------------------------------------------------------------------------
    def take(self, exiting: Callable[[], bool]) -> Pending | None:
        """The next pool job, marked running (blocks); ``None`` once the manager exits."""
        while not self.queue and not exiting():
            self.cond.wait()
        if exiting():
            return None
        pending = self.queue.popleft()
        job = pending.job
        job.status, job.started_at, job.progress, job.progress_label = JobStatus.running, time.time(), 0.0, "running"
        job.queue_position = None
        self.running.add(job.id)
        self._manager.store.save(job)
        return pending

    def renumber(self) -> list[str]:
        """Queue positions after a change; returns the ids whose position moved."""
        moved = []
        for position, pending in enumerate(self.queue):
            if pending.job.queue_position != position:
                pending.job.queue_position = position
                self._manager.store.save(pending.job)
                moved.append(pending.job.id)
        return moved

    def drain(self) -> list[Pending]:
        """Take every queued job out (shutdown) and wake the threads so they exit."""
        queued = list(self.queue)
        self.queue.clear()
        self.cond.notify_all()
        return queued

    def stats(self) -> dict[str, int]:
        return {"workers": len(self.workers), "queued": len(self.queue), "running": len(self.running)}

    # --- event loop ----------------------------------------------------------------------------
    async def stop(self, wait_s: float) -> None:
        """After the model thread stopped: cancel the pool jobs still running, wait for the
        threads, end any job that ignored the cancel, close the pool's runtimes."""
        reason = Unavailable("the server shut down while the job was running; submit it again",
                             code="shutting_down")
        with self.cond:
            self.cond.notify_all()
            running = [p for p in self._manager.active_pending() if p.job.id in self.running]
            for pending in running:
                pending.cancel_reason = reason
                pending.cancel.set()
        for worker in self.workers:
            await asyncio.to_thread(worker.join, wait_s)
        self._manager.terminate_stuck([p for p in running if not p.job.status.terminal], reason)
        await asyncio.to_thread(self.models.close)


__all__ = ["LightPool", "PoolBoard", "PoolModels"]
