"""PgEventBus: ``LISTEN``/``NOTIFY`` on one dedicated connection, read by one thread.

Payloads are job ids only; receivers re-read the record. When the connection drops, the thread
reconnects with back-off and calls ``on_resync`` (everything watched is re-read), because
notifications sent while nobody listened are gone.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg

from ..interfaces import EventBus
from .jobs import CANCEL_CHANNEL, JOB_CHANNEL, WORK_CHANNEL

log = logging.getLogger("kiapi.cluster")


class PgEventBus(EventBus):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kiapi-cluster-bus", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        backoff_s = 0.2
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                     application_name="kiapi-bus") as conn:
                    self._conn = conn
                    for channel in (JOB_CHANNEL, CANCEL_CHANNEL, WORK_CHANNEL):
                        conn.execute(f"LISTEN {channel}")
                    self.connected.set()
                    if not first:
                        log.info("cluster event bus reconnected; resyncing watchers")
                        self._call(self.on_resync)
                    first, backoff_s = False, 0.2
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._dispatch(note.channel, note.payload)
            except psycopg.Error as exc:
                self.connected.clear()
                if self._stop.is_set():
                    return
                log.warning("cluster event bus: %s; reconnecting in %.1f s", exc, backoff_s)
                self._stop.wait(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                first = False
            finally:
                self._conn = None

    def _dispatch(self, channel: str, payload: str) -> None:
        if channel == JOB_CHANNEL:
            self._call(self.on_job, payload)
        elif channel == CANCEL_CHANNEL:
            self._call(self.on_cancel, payload)
            self._call(self.on_job, payload)
        elif channel == WORK_CHANNEL:
            self._call(self.on_work)

    @staticmethod
    def _call(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a receiver's bug must not stop the bus
            log.exception("cluster event bus: a receiver failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3.0)

    def _notify(self, channel: str, payload: str) -> None:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))

    def job_changed(self, job_id: str) -> None:
        self._notify(JOB_CHANNEL, job_id)

    def cancel_requested(self, job_id: str) -> None:
        self._notify(CANCEL_CHANNEL, job_id)

    def work_available(self) -> None:
        self._notify(WORK_CHANNEL, "")

    def wait_connected(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        return self.connected.wait(max(0.0, deadline - time.monotonic()))


__all__ = ["PgEventBus"]
