"""Waiting for jobs on the event loop: long-poll, wait-until-done, and the SSE event stream.

Job records change on the worker thread; waiters live on the event loop. A waiter *arms* a
future for its job, then reads the record, then awaits the future. Every change calls
:meth:`Watchers.notify` (from any thread), which schedules a wake-up on the loop with
``loop.call_soon_threadsafe`` only when some waiter is armed for one of the jobs: a wake-up
nobody waits for costs the loop nothing. Arming before reading is what makes skipping safe: a
change the notifier saw no waiter for happened before the waiter's read, so the read sees it.
A wake-up that arrives late or twice is harmless (the waiter reads again).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..errors import NotFound
from .models import Job


def change_key(job: Job) -> tuple[Any, ...]:
    """What a watcher counts as a change: status, progress, label, queue position, artifacts."""
    return (job.status, job.progress, job.progress_label, job.queue_position, len(job.artifacts))


class Watchers:
    """Armed waiters by job id: those that want every change (long-poll, SSE) and those that
    only want the end (a sync request). Changes that cannot end a job (progress, queue
    positions: every job start renumbers the queue) wake only the first kind, so a sync request
    wakes once, when its job is done or gone.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._changes: dict[str, list[asyncio.Future[None]]] = {}
        self._final: dict[str, list[asyncio.Future[None]]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def notify(self, *job_ids: str, final: bool = False) -> None:
        """Wake the waiters of ``job_ids``; ``final``: the jobs ended or were deleted, so wake
        the waiters for the end too. Safe from any thread."""
        loop = self.loop
        if loop is None or not job_ids:
            return
        if not any(i in self._changes or (final and i in self._final) for i in job_ids):
            return  # nobody armed (see the module docstring for why this cannot lose a wake-up)
        try:
            loop.call_soon_threadsafe(self._wake, job_ids, final)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _wake(self, job_ids: tuple[str, ...], final: bool) -> None:
        for job_id in job_ids:
            for waiter in self._changes.pop(job_id, ()):
                if not waiter.done():
                    waiter.set_result(None)
            if final:
                for waiter in self._final.pop(job_id, ()):
                    if not waiter.done():
                        waiter.set_result(None)

    def arm(self, job_id: str, *, final: bool = False) -> asyncio.Future[None]:
        """Register interest in the next change of ``job_id`` (``final``: its end only). Arm
        *before* reading the record; always :meth:`disarm` after."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._final if final else self._changes).setdefault(job_id, []).append(waiter)
        return waiter

    def disarm(self, job_id: str, waiter: asyncio.Future[None], *, final: bool = False) -> None:
        armed = self._final if final else self._changes
        waiters = armed.get(job_id)
        if waiters is not None:
            with contextlib.suppress(ValueError):
                waiters.remove(waiter)
            if not waiters:
                del armed[job_id]

    @staticmethod
    async def woken(waiter: asyncio.Future[None], timeout: float) -> bool:
        """Wait for an armed future; False on timeout."""
        try:
            async with asyncio.timeout(max(timeout, 0.0)):
                await waiter
            return True
        except TimeoutError:
            return False


async def wait(get: Callable[[str], Job], watchers: Watchers, job_id: str, timeout: float) -> Job:
    """The job once terminal, or as it is after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        waiter = watchers.arm(job_id, final=True)
        try:
            job = get(job_id)
            remaining = deadline - time.monotonic()
            if job.status.terminal or remaining <= 0:
                return job
            await watchers.woken(waiter, remaining)
        finally:
            watchers.disarm(job_id, waiter, final=True)


async def wait_change(get: Callable[[str], Job], watchers: Watchers, job_id: str, timeout: float,
                      since: Job | None = None) -> Job:
    """The job once it differs from ``since`` (default: as it is now), is terminal, or after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    base = change_key(since if since is not None else get(job_id))
    while True:
        waiter = watchers.arm(job_id)
        try:
            job = get(job_id)
            remaining = deadline - time.monotonic()
            if change_key(job) != base or job.status.terminal or remaining <= 0:
                return job
            await watchers.woken(waiter, remaining)
        finally:
            watchers.disarm(job_id, waiter)


async def events(get: Callable[[str], Job], watchers: Watchers, job_id: str,
                 keepalive_s: float) -> AsyncIterator[Job | None]:
    """Snapshots on every change, ending with the terminal state; ``None`` after ``keepalive_s``
    quiet seconds. Changes coalesce when the reader is slower than the job (a slow client never
    builds a backlog). Raises NotFound for an unknown job; ends early if the job is deleted."""
    last: tuple[Any, ...] | None = None
    while True:
        waiter = watchers.arm(job_id)
        try:
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
            woke = await watchers.woken(waiter, keepalive_s)
        finally:
            watchers.disarm(job_id, waiter)
        if not woke:
            yield None


__all__ = ["Watchers", "change_key", "events", "wait", "wait_change"]
