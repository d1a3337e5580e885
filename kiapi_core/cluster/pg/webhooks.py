"""PgWebhookStore: a cluster's webhook subscriptions and pending deliveries in PostgreSQL.

On one host, webhooks live in ``<data_dir>/webhooks.sqlite3`` (:mod:`kiapi_core.webhooks.store`).
In a cluster a job is submitted on one host and run on another, and either may die, so both
halves are shared:

* the **subscription** is written by the submitting host; the host that emits the job's events
  (the one running it, the one canceling it while queued, the reaper that fails it) turns each
  event into a delivery row when a subscription asks for it. The subscription row is locked while
  an event is recorded, so the start is recorded once and the completion once, whoever sends it;
* a subscriber whose job another host already started (or ended) before the subscription landed
  records what was missed, and any host's sender completes a subscription whose job ended
  without it (its host died between the end and the record): at-least-once for every event;
* **deliveries** are claimed by any live host's sender under a lease (``FOR UPDATE SKIP LOCKED``;
  the lease is the row's ``next_at``), so a sender that dies mid-send is replaced, the message
  is sent again with the same ``webhook-id`` (receivers deduplicate on it), and one job's events
  keep their order (only its oldest delivery is ever due).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from ...jobs.models import Job
from ...webhooks.store import Delivery, Subscription
from .connect import Pool
from .jobs import WORK_CHANNEL

_job = msgspec.json.Decoder(Job)
_TERMINAL = ("succeeded", "failed", "canceled")
#: ``body(event, job)``: a delivery's JSON (the dispatcher's format, injected to keep one).
BodyOf = Callable[[str, Job], bytes]


class PgWebhookStore:
    #: The dispatcher records events through :meth:`add_event` and never keeps subscriptions in memory.
    shared = True

    def __init__(self, pool: Pool, *, claim_s: float = 60.0) -> None:
        self.pool = pool
        #: How long a claimed delivery is held by the sender that took it (more than one attempt).
        self.claim_s = claim_s
        self.body_of: BodyOf | None = None

    def open(self) -> dict[str, Subscription]:
        return {}

    def close(self) -> None:
        pass

    def _deliver(self, conn: Any, job_id: str, url: str, event: str, body: bytes, now: float) -> None:
        conn.execute("INSERT INTO kiapi_webhook_deliveries (msg_id, job_id, url, event, body, next_at) "
                     "VALUES (%s, %s, %s, %s, %s, %s)", ("msg_" + uuid.uuid4().hex, job_id, url, event, body, now))

    def subscribe(self, job_id: str, subscription: Subscription) -> None:
        """Store the subscription; record the start (and end) another host already reached."""
        assert self.body_of is not None
        now = time.time()
        with self.pool.connection() as conn, conn.transaction():
            # FOR SHARE: no host claims the job until the subscription is visible (claims skip locked rows).
            row = conn.execute("SELECT data::text, status FROM kiapi_jobs WHERE id = %s FOR SHARE", (job_id,)).fetchone()
            if row is None:
                return  # deleted already
            job, status = _job.decode(row[0]), row[1]
            started = status != "queued" and job.started_at is not None
            if started and "start" in subscription.events:
                self._deliver(conn, job_id, subscription.url, "start", self.body_of("start", job), now)
            if status in _TERMINAL:
                if "completed" in subscription.events:
                    self._deliver(conn, job_id, subscription.url, "completed", self.body_of("completed", job), now)
                return
            conn.execute("INSERT INTO kiapi_webhook_subs (job_id, url, events, start_done) VALUES (%s, %s, %s, %s) "
                         "ON CONFLICT (job_id) DO NOTHING",
                         (job_id, subscription.url, sorted(subscription.events), started))
            if status == "queued":  # a claim that skipped the locked row tries again now
                conn.execute("SELECT pg_notify(%s, '')", (WORK_CHANNEL,))

    def unsubscribe(self, job_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM kiapi_webhook_subs WHERE job_id = %s", (job_id,))

    def add_event(self, job_id: str, event: str, body: bytes, now: float) -> None:
        """Record a job event for its subscription, if any; a completion ends the subscription."""
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT url, events, start_done FROM kiapi_webhook_subs WHERE job_id = %s FOR UPDATE",
                               (job_id,)).fetchone()
            if row is None or (event == "start" and row[2]):
                return
            if event == "start":
                conn.execute("UPDATE kiapi_webhook_subs SET start_done = true WHERE job_id = %s", (job_id,))
            elif event == "completed":
                conn.execute("DELETE FROM kiapi_webhook_subs WHERE job_id = %s", (job_id,))
            if event in row[1]:
                self._deliver(conn, job_id, row[0], event, body, now)

    def complete_orphans(self, now: float) -> int:
        """Subscriptions whose job ended (or vanished) without their completion recorded: the
        host that ended it died first. Record it now from the job's record."""
        assert self.body_of is not None
        done = 0
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "SELECT s.job_id, s.url, s.events, j.data::text FROM kiapi_webhook_subs s LEFT JOIN kiapi_jobs j "
                "ON j.id = s.job_id WHERE j.id IS NULL OR j.status = ANY(%s) FOR UPDATE OF s SKIP LOCKED",
                (list(_TERMINAL),)).fetchall()
            for job_id, url, events, data in rows:
                conn.execute("DELETE FROM kiapi_webhook_subs WHERE job_id = %s", (job_id,))
                if data is not None and "completed" in events:
                    self._deliver(conn, job_id, url, "completed", self.body_of("completed", _job.decode(data)), now)
                    done += 1
        return done

    def due(self, now: float, limit: int = 32) -> tuple[list[Delivery], float | None]:
        """Claim deliveries to send now (each job's oldest only) for ``claim_s``; and when the
        next one falls due."""
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute(
                "WITH due AS (SELECT seq, next_at FROM kiapi_webhook_deliveries d WHERE next_at <= %s AND seq = "
                "(SELECT min(seq) FROM kiapi_webhook_deliveries e WHERE e.job_id = d.job_id) ORDER BY next_at "
                "LIMIT %s FOR UPDATE SKIP LOCKED) UPDATE kiapi_webhook_deliveries w SET next_at = %s FROM due "
                "WHERE w.seq = due.seq RETURNING w.seq, w.msg_id, w.job_id, w.url, w.event, w.body, w.attempts, "
                "due.next_at", (now, limit, now + self.claim_s)).fetchall()
            later = conn.execute("SELECT min(next_at) FROM kiapi_webhook_deliveries").fetchone()
        ready = [Delivery(seq=r[0], msg_id=r[1], job_id=r[2], url=r[3], event=r[4], body=bytes(r[5]),
                          attempts=r[6], next_at=r[7]) for r in rows]
        return ready, (None if later is None or later[0] is None else float(later[0]))

    def done(self, seq: int) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM kiapi_webhook_deliveries WHERE seq = %s", (seq,))

    def retry(self, seq: int, attempts: int, next_at: float, error: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("UPDATE kiapi_webhook_deliveries SET attempts = %s, next_at = %s, last_error = %s "
                         "WHERE seq = %s", (attempts, next_at, error[:500], seq))

    def pending(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM kiapi_webhook_deliveries").fetchone()
        return int(row[0]) if row else 0


__all__ = ["PgWebhookStore"]
