"""Which queued job runs next: FIFO, except that a job whose model is loaded may go before one
that would evict it, within a fairness bound.

On real weights a model load takes tens of seconds, so traffic alternating between two models
that do not fit together would pay one load per job in FIFO order. The scheduler lets a queued
job that needs no eviction ("cheap") overtake the jobs ahead of it that would evict ("costly"),
but a job is never passed over more than ``max_bypass`` times, nor held back longer than
``max_bypass_s`` seconds after it was first passed over: once *due*, it runs before any later job.

:func:`plan` replays the same rule over the whole queue, so ``queue_position`` is the order
the jobs will really start in (as long as no new job changes it), not their arrival order.
The functions are pure: the manager calls them under its lock.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


class Queued(Protocol):
    """What the scheduler reads of a queued job (:class:`~kiapi_core.jobs.worker.Pending`)."""

    bypassed: int
    bypassed_since: float | None

    @property
    def model_key(self) -> tuple[str, str]: ...


@dataclass(frozen=True)
class Fairness:
    """The bound: ``enabled`` False (or ``max_bypass`` 0) is strict FIFO."""

    enabled: bool = True
    max_bypass: int = 4
    max_bypass_s: float = 60.0

    @property
    def active(self) -> bool:
        return self.enabled and self.max_bypass > 0


def pick(queue: Sequence[Queued], cheap: Callable[[Queued], bool], fairness: Fairness, now: float,
         bypassed: Callable[[Queued], int] | None = None) -> int:
    """The index of the job to start next. ``bypassed`` overrides the jobs' own counts (for
    :func:`plan`)."""
    if not fairness.active or len(queue) < 2:
        return 0
    count = bypassed or (lambda job: job.bypassed)
    for index, job in enumerate(queue):
        if _due(job, count(job), fairness, now) or cheap(job):
            return index
    return 0  # everything would evict: plain FIFO


def passed_over(queue: Sequence[Queued], index: int, now: float) -> None:
    """Count the bypass of the jobs ahead of ``index`` (the job that starts)."""
    for job in itertools.islice(queue, index):
        job.bypassed += 1
        if job.bypassed_since is None:
            job.bypassed_since = now


def plan(queue: Sequence[Queued], cheap: Callable[[Queued], bool], fairness: Fairness,
         now: float) -> list[Queued]:
    """The queue in the order its jobs will start, replaying :func:`pick`. Once a costly job
    starts in the replay, its model is taken to be the only one loaded."""
    if not fairness.active or len({job.model_key for job in queue}) < 2:
        return list(queue)
    remaining = list(queue)
    counts = {id(job): job.bypassed for job in remaining}
    loaded: tuple[str, str] | None = None  # None: the models loaded now

    def cheap_then(job: Queued) -> bool:
        return cheap(job) if loaded is None else job.model_key == loaded

    order: list[Queued] = []
    while remaining:
        index = pick(remaining, cheap_then, fairness, now, lambda job: counts[id(job)])
        chosen = remaining.pop(index)
        for job in remaining[:index]:
            counts[id(job)] += 1
        if not cheap_then(chosen):
            loaded = chosen.model_key
        order.append(chosen)
    return order


def _due(job: Queued, bypassed: int, fairness: Fairness, now: float) -> bool:
    if bypassed >= fairness.max_bypass:
        return True
    return job.bypassed_since is not None and now - job.bypassed_since >= fairness.max_bypass_s


__all__ = ["Fairness", "Queued", "passed_over", "pick", "plan"]
