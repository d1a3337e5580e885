"""Pending webhook deliveries and subscriptions in SQLite (``<data_dir>/webhooks.sqlite3``).

A delivery row exists from the moment an event is due until a receiver accepted it (2xx) or
its retries ran out, so a restart never loses one; one that was in flight when the process died
is sent again with the same ``webhook-id`` (receivers deduplicate on it). A subscription row
remembers a running job's webhook, so that a job cut off by a crash still reports its end
(``failed``, ``server_restarted``) after the restart. WAL mode with ``synchronous=NORMAL``, as
the job store; every call runs in a thread (never on the event loop, never on the model thread).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS deliveries_job ON deliveries(job_id, seq);
CREATE TABLE IF NOT EXISTS subscriptions (
    job_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL
);
"""


class Delivery(msgspec.Struct, kw_only=True):
    seq: int
    msg_id: str
    job_id: str
    url: str
    event: str
    body: bytes
    attempts: int
    next_at: float


class Subscription(msgspec.Struct, kw_only=True, frozen=True):
    url: str
    events: frozenset[str]


class WebhookStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def open(self) -> dict[str, Subscription]:
        """Open (creating) the database; returns the subscriptions of jobs not yet reported ended."""
        with self._lock:
            if self._conn is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                self._conn = conn
            rows = self._conn.execute("SELECT job_id, url, events FROM subscriptions").fetchall()
        return {job_id: Subscription(url=url, events=frozenset(events.split(","))) for job_id, url, events in rows}

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _run(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with self._lock:
            if self._conn is None:
                return []
            return self._conn.execute(sql, args).fetchall()

    def subscribe(self, job_id: str, subscription: Subscription) -> None:
        self._run("INSERT OR REPLACE INTO subscriptions(job_id, url, events) VALUES (?, ?, ?)",
                  (job_id, subscription.url, ",".join(sorted(subscription.events))))

    def unsubscribe(self, job_id: str) -> None:
        self._run("DELETE FROM subscriptions WHERE job_id = ?", (job_id,))

    def add(self, msg_id: str, job_id: str, url: str, event: str, body: bytes, next_at: float) -> None:
        self._run("INSERT OR IGNORE INTO deliveries(msg_id, job_id, url, event, body, next_at) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (msg_id, job_id, url, event, body, next_at))

    def due(self, now: float, limit: int = 32) -> tuple[list[Delivery], float | None]:
        """Deliveries to send now (only each job's oldest, so a job's events keep their order)
        and when the next one falls due."""
        rows = self._run(
            "SELECT seq, msg_id, job_id, url, event, body, attempts, next_at FROM deliveries d "
            "WHERE seq = (SELECT MIN(seq) FROM deliveries e WHERE e.job_id = d.job_id) "
            "ORDER BY next_at LIMIT ?", (limit * 4,))
        ready = [Delivery(seq=r[0], msg_id=r[1], job_id=r[2], url=r[3], event=r[4], body=r[5],  # type: ignore[arg-type]
                          attempts=r[6], next_at=r[7])  # type: ignore[arg-type]
                 for r in rows]
        due = [d for d in ready if d.next_at <= now][:limit]
        later = [d.next_at for d in ready if d.next_at > now]
        return due, (min(later) if later else None)

    def done(self, seq: int) -> None:
        self._run("DELETE FROM deliveries WHERE seq = ?", (seq,))

    def retry(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        self._run("UPDATE deliveries SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
                  (attempts, next_at, error[:500], seq))

    def pending(self) -> int:
        rows = self._run("SELECT COUNT(*) FROM deliveries")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]


__all__ = ["Delivery", "Subscription", "WebhookStore"]
