"""Waiting for jobs on the event loop: long-poll, wait-until-done, and the SSE event stream.

Job records change on the worker thread; waiters live on the event loop. Every change calls
:meth:`Watchers.notify` (from any thread), which schedules a wake-up on the loop with
``loop.call_soon_threadsafe``. A waiter re-reads the record each time it wakes, so a wake-up
that arrives late or twice is harmless, and one that arrives between the read and the wait is
never lost (the read and the registration both happen on the loop, before it yields).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..errors import NotFound
from .models import Job


def change_key(job: Job) -> tuple[Any, ...]:
    """What a watcher counts as a change: status, progress, label, queue position, artifacts."""
    return (job.status, job.progress, job.progress_label, job.queue_position, len(job.artifacts))


class Watchers:
    """One asyncio.Event per watched job, replaced after every wake-up.

    Two kinds of waiters: those that want every change (long-poll, SSE) and those that only
    want the end (a sync request). Changes that cannot end a job (progress, queue positions:
    every job start renumbers the whole queue) wake only the first kind, so a sync request
    wakes once, when its job is done or gone.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._events: dict[str, asyncio.Event] = {}
        self._final: dict[str, asyncio.Event] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def notify(self, *job_ids: str, final: bool = False) -> None:
        """Wake the waiters of ``job_ids``; ``final``: the jobs ended or were deleted, so wake
        the waiters for the end too. Safe from any thread."""
        loop = self.loop
        if loop is None or not job_ids:
            return
        try:
            loop.call_soon_threadsafe(self._wake, job_ids, final)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _wake(self, job_ids: tuple[str, ...], final: bool) -> None:
        for job_id in job_ids:
            event = self._events.pop(job_id, None)
            if event is not None:
                event.set()
            if final:
                event = self._final.pop(job_id, None)
                if event is not None:
                    event.set()

    async def woken(self, job_id: str, timeout: float, *, final: bool = False) -> bool:
        """Wait for the next change of ``job_id`` (``final``: for its end only); False on timeout."""
        events = self._final if final else self._events
        event = events.get(job_id)
        if event is None:
            event = events[job_id] = asyncio.Event()
        try:
            await asyncio.wait_for(event.wait(), max(timeout, 0.0))
            return True
        except TimeoutError:
            return False


async def wait(get: Callable[[str], Job], watchers: Watchers, job_id: str, timeout: float) -> Job:
    """The job once terminal, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        job = get(job_id)
        remaining = deadline - time.monotonic()
        if job.status.terminal or remaining <= 0:
            return job
        await watchers.woken(job_id, remaining, final=True)


async def wait_change(get: Callable[[str], Job], watchers: Watchers, job_id: str, timeout: float,
                      since: Job | None = None) -> Job:
    """The job once it differs from ``since`` (default: as it is now), is terminal, or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    base = change_key(since if since is not None else get(job_id))
    while True:
        job = get(job_id)
        remaining = deadline - time.monotonic()
        if change_key(job) != base or job.status.terminal or remaining <= 0:
            return job
        await watchers.woken(job_id, remaining)


async def events(get: Callable[[str], Job], watchers: Watchers, job_id: str,
                 keepalive_s: float) -> AsyncIterator[Job | None]:
    """Snapshots on every change, ending with the terminal state; ``None`` after ``keepalive_s``
    quiet seconds. Changes coalesce when the reader is slower than the job (a slow client never
    builds a backlog). Raises NotFound for an unknown job; ends early if the job is deleted."""
    last: tuple[Any, ...] | None = None
    while True:
        try:
            job = get(job_id)
        except NotFound:
            if last is None:
                raise
            return
        if change_key(job) != last:
            last = change_key(job)
            yield job
        if job.status.terminal:
            return
        if not await watchers.woken(job_id, keepalive_s):
            yield None


__all__ = ["Watchers", "change_key", "events", "wait", "wait_change"]
