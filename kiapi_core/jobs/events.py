"""Job events for the manager's listeners (metrics, lifecycle logs, webhooks), off the hot lock.

The manager *records* an event (``queued``, ``started``, ``progress``, ``finished``) while it
holds its lock, so events are in the order the changes happened; it *delivers* them after it
let go of the lock, on whichever thread made the change. Listeners used to run under the lock,
where a log line or a metric update per event (0.13–0.27 ms a job) made the event loop wait.

Delivery keeps the order across threads: one thread delivers at a time, and a thread that finds
another delivering leaves its events to it instead of waiting (the event loop never blocks
here). A worker delivers after it woke the job's waiters, so an answer does not wait for them.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

import msgspec

from .models import Job

log = logging.getLogger("kiapi.jobs")

#: ``listener(event, job)``: quick, must not block and must not call the job manager.
Listener = Callable[[str, Job], None]


def snapshot(job: Job) -> Job:
    """A copy whose containers the worker will not mutate."""
    return msgspec.structs.replace(job, artifacts=list(job.artifacts), warnings=list(job.warnings),
                                   metrics=dict(job.metrics))


class JobEvents:
    """The ordered outbox between the job manager and its listeners."""

    def __init__(self) -> None:
        #: Called with a snapshot of the job, on any thread, never under the manager's lock.
        self.listeners: list[Listener] = []
        self._outbox: collections.deque[tuple[str, Job]] = collections.deque()
        self._delivering = threading.Lock()

    def record(self, event: str, job: Job) -> None:
        """Note an event (manager's lock held): a snapshot of ``job`` as it is now."""
        if self.listeners:
            self._outbox.append((event, snapshot(job)))

    def deliver(self) -> None:
        """Hand every recorded event to the listeners, in order (manager's lock not held)."""
        while self._outbox:
            if not self._delivering.acquire(blocking=False):
                return  # another thread is delivering: it takes these too (it re-checks the outbox)
            try:
                while self._outbox:
                    event, job = self._outbox.popleft()
                    for listener in self.listeners:
                        try:
                            listener(event, job)
                        except Exception:  # an observer must never break a job
                            log.exception("job listener %r failed on %s of %s", listener, event, job.id)
            finally:
                self._delivering.release()

    def flush(self, timeout_s: float) -> None:
        """At shutdown: wait up to ``timeout_s`` for a thread that is delivering (a job's last
        events may have been left to it), then deliver what is left, so listeners (webhooks)
        see every event before they stop. Blocks: call it off the event loop."""
        if self._delivering.acquire(timeout=timeout_s):
            self._delivering.release()
        self.deliver()


__all__ = ["JobEvents", "Listener", "snapshot"]
