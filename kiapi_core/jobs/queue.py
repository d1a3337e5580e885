"""The model thread's queue: FIFO, or a job for a loaded model first (:mod:`.scheduler`).

Guarded by the job manager's lock, like everything the manager holds; the store's ``save`` is
called for every job whose ``queue_position`` changes.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

from . import scheduler
from .models import Job
from .worker import Pending

log = logging.getLogger("kiapi.jobs")


class ModelQueue:
    """Queued model jobs in arrival order, and the order they will really start in."""

    def __init__(self, *, fairness: scheduler.Fairness, needs_eviction: Callable[..., bool] | None,
                 save: Callable[[Job], None]) -> None:
        self.jobs: collections.deque[Pending] = collections.deque()
        self._fairness = fairness
        self._needs_eviction = needs_eviction
        self._save = save

    def __len__(self) -> int:
        return len(self.jobs)

    def __iter__(self) -> Iterator[Pending]:
        return iter(self.jobs)

    def __contains__(self, pending: object) -> bool:
        return pending in self.jobs

    def append(self, pending: Pending) -> None:
        self.jobs.append(pending)

    def remove(self, pending: Pending) -> None:
        self.jobs.remove(pending)

    def clear(self) -> None:
        self.jobs.clear()

    def take(self) -> Pending:
        """The job to start now (the queue is not empty): FIFO, or a job for a loaded model."""
        index = 0
        if self.mixed():
            now = time.monotonic()
            try:
                index = scheduler.pick(self.jobs, self._cheap_check(), self._fairness, now)
                scheduler.passed_over(self.jobs, index, now)
            except Exception:  # never let scheduling stop the worker: FIFO
                log.exception("job scheduling failed; starting the oldest job")
                index = 0
        pending = self.jobs[index]
        del self.jobs[index]
        if index:
            log.info("job %s starts before %d queued job(s): its model is loaded, theirs would "
                     "evict it", pending.job.id, index)
        return pending

    def mixed(self) -> bool:
        """Whether the order could differ from FIFO: jobs for more than one model queued."""
        if not self._fairness.active or self._needs_eviction is None or len(self.jobs) < 2:
            return False
        first = self.jobs[0].model_key
        return any(p.model_key != first for p in self.jobs)

    def renumber(self) -> list[str]:
        """Set every queued job's ``queue_position`` to where it will really start; returns
        the ids whose position changed."""
        order: Collection[Any] = self.jobs
        if self.mixed():
            try:
                order = scheduler.plan(self.jobs, self._cheap_check(), self._fairness, time.monotonic())
            except Exception:  # positions are a forecast; never fail a submit on them
                log.exception("job scheduling failed; showing arrival order")
        moved = []
        for position, pending in enumerate(order):
            if pending.job.queue_position != position:
                pending.job.queue_position = position
                self._save(pending.job)
                moved.append(pending.job.id)
        return moved

    def ids(self) -> list[str]:
        return [p.job.id for p in self.jobs]

    def _cheap_check(self) -> Callable[[Any], bool]:
        """Whether a queued job can start without evicting a loaded model; asked once per
        model and operation (the answer depends on what is loaded, not on the job)."""
        assert self._needs_eviction is not None
        needs, seen = self._needs_eviction, {}

        def cheap(pending: Any) -> bool:
            key = (*pending.model_key, pending.operation.name)
            if key not in seen:
                try:
                    seen[key] = not needs(pending.capability, pending.model, pending.operation,
                                          pending.job.params)
                except Exception:  # scheduling must never fail a queue
                    log.exception("job scheduling: could not tell whether %s/%s needs an eviction", *key[:2])
                    seen[key] = False
            return seen[key]

        return cheap


__all__ = ["ModelQueue"]
