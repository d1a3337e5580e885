"""PgJobBackend: job records, the queue and the host registry in PostgreSQL.

Claiming is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks the oldest queued job
the predicate allows (so two hosts never wait on each other and never take the same job), and
the same transaction marks it running under this host with a lease and a new attempt number.
Every later write by the owner carries ``WHERE owner = %s AND attempt = %s AND status =
'running'``: when it matches nothing, the writer was fenced out (its lease expired and the job
was re-queued or failed by :meth:`reap`, or the job was deleted).

Notifications (``pg_notify``) are sent inside the writing transaction, so a listener never
hears about a change before it is visible.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import msgspec

from ...errors import InvalidRequest, QueueFull
from ...jobs.models import Job, JobStatus
from ...jobs.store import JobPage
from ..interfaces import (
    HOST_LOST,
    Claim,
    ClaimerState,
    Fenced,
    HostState,
    JobBackend,
    PersistedError,
    QueuedNeed,
    Submission,
    lost,
    replay,
    requeued,
)
from .connect import Pool, prepare_schema
from .pins import pin_inputs

JOB_CHANNEL, CANCEL_CHANNEL, WORK_CHANNEL = "kiapi_job", "kiapi_cancel", "kiapi_work"

_enc = msgspec.json.Encoder()
_job = msgspec.json.Decoder(Job)
_host = msgspec.json.Decoder(HostState)
_err = msgspec.json.Decoder(PersistedError)

_SELECT = ("SELECT data::text, status, (SELECT count(*) FROM kiapi_jobs q WHERE q.status = 'queued' "
           "AND q.seq < j.seq) FROM kiapi_jobs j")

_CLAIM = """
SELECT id, attempt, request FROM kiapi_jobs j
WHERE status = 'queued' AND capability = ANY(%(caps)s) AND NOT (id = ANY(%(exclude)s)) AND light = %(light)s
  AND need_gb + CASE WHEN (capability || ':' || model) = ANY(%(resident)s) THEN 0 ELSE load_gb END
      <= %(claimable)s
  AND (light OR (capability || ':' || model) = ANY(%(resident)s)
       OR queued_at <= now() - make_interval(secs => %(wait)s)
       OR NOT EXISTS (SELECT 1 FROM kiapi_hosts h
                      WHERE h.id <> %(me)s AND h.heartbeat_at > now() - make_interval(secs => %(live)s)
                        AND NOT (h.state->>'draining')::boolean
                        AND h.state->'resident' ? (j.capability || ':' || j.model)))
ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED
"""


def _decode(row: tuple[Any, ...]) -> Job:
    job = _job.decode(row[0])
    job.queue_position = int(row[2]) if row[1] == "queued" else None
    return job


class PgJobBackend(JobBackend):
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def prepare(self) -> None:
        prepare_schema(self.pool)

    def close(self) -> None:
        self.pool.close()

    # --- records ------------------------------------------------------------------------
    def submit(self, submission: Submission, *, max_queue: int) -> Job:
        job = submission.job
        key, fp = submission.idempotency or (None, None)
        with self.pool.connection() as conn, conn.transaction():
            if key is not None:
                # Serialise submissions of one key across hosts: the second waits, then replays.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))
                known = self._by_key(conn, key)
                if known is not None:
                    replay(known[0], known[1], fp or "")
            queued = conn.execute("SELECT count(*) FROM kiapi_jobs WHERE status = 'queued'").fetchone()
            if queued is not None and queued[0] >= max_queue:
                raise QueueFull(f"the cluster's job queue is full ({max_queue} jobs waiting); retry later",
                                headers={"Retry-After": "10"}, max_queue=max_queue)
            job.queue_position = int(queued[0]) if queued else 0
            conn.execute(
                "INSERT INTO kiapi_jobs (id, status, type, capability, model, created_at, idem_key, idem_fp, "
                "need_gb, load_gb, light, request, data) VALUES (%s, 'queued', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (job.id, job.type, job.capability, job.model, job.created_at, key, fp, submission.need_gb,
                 submission.load_gb, submission.light, submission.request, _enc.encode(job).decode()))
            if submission.pins:
                pin_inputs(conn, job.id, submission.pins)
            conn.execute("SELECT pg_notify(%s, ''), pg_notify(%s, %s)", (WORK_CHANNEL, JOB_CHANNEL, job.id))
        return job

    def get(self, job_id: str) -> Job | None:
        with self.pool.connection() as conn:
            row = conn.execute(_SELECT + " WHERE id = %s", (job_id,)).fetchone()
        return None if row is None else _decode(row)

    def _by_key(self, conn: Any, key: str) -> tuple[Job, str] | None:
        row = conn.execute(_SELECT.replace("SELECT ", "SELECT idem_fp, ", 1) + " WHERE idem_key = %s",
                           (key,)).fetchone()
        return None if row is None else (_decode(row[1:]), row[0] or "")

    def find_idempotent(self, key: str) -> tuple[Job, str] | None:
        with self.pool.connection() as conn:
            return self._by_key(conn, key)

    def page(self, *, status: Collection[JobStatus] | None = None, type: str | None = None,
             limit: int = 50, after: str | None = None) -> JobPage:
        where, args = ["true"], []
        with self.pool.connection() as conn:
            if after is not None:
                row = conn.execute("SELECT seq FROM kiapi_jobs WHERE id = %s", (after,)).fetchone()
                if row is None:
                    raise InvalidRequest(
                        f"the cursor after={after!r} names no kept job (it may have expired or been "
                        "deleted); list again without `after`", code="invalid_cursor", field="after")
                where.append("seq < %s")
                args.append(row[0])
            if status:
                where.append("status = ANY(%s)")
                args.append([s.value for s in status])
            if type is not None:
                where.append("type = %s")
                args.append(type)
            rows = conn.execute(_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY seq DESC LIMIT %s",
                                (*args, limit + 1)).fetchall()
        jobs = [_decode(r) for r in rows]
        return JobPage(jobs[:limit], len(jobs) > limit)

    def remove(self, job_id: str) -> tuple[Job, bool] | None:
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("DELETE FROM kiapi_jobs WHERE id = %s RETURNING data::text, status, 0",
                               (job_id,)).fetchone()
            if row is None:
                return None
            conn.execute("SELECT pg_notify(%s, %s), pg_notify(%s, %s)", (JOB_CHANNEL, job_id, CANCEL_CHANNEL, job_id))
        return _decode(row), row[1] == "running"

    def error_of(self, job_id: str) -> PersistedError | None:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT error::text FROM kiapi_jobs WHERE id = %s", (job_id,)).fetchone()
        return None if row is None or row[0] is None else _err.decode(row[0])

    def cancel(self, job_id: str) -> Job | None:
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(_SELECT + " WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                return None
            job = _decode(row)
            if job.status is JobStatus.queued:
                job.status, job.finished_at, job.queue_position = JobStatus.canceled, time.time(), None
                job.progress_label = "canceled"
                error = PersistedError(status=409, code="canceled", detail=f"job {job_id} was canceled")
                conn.execute("UPDATE kiapi_jobs SET status = 'canceled', finished_at = %s, data = %s, error = %s "
                             "WHERE id = %s", (job.finished_at, _enc.encode(job).decode(),
                                               _enc.encode(error).decode(), job_id))
                conn.execute("SELECT pg_notify(%s, %s)", (JOB_CHANNEL, job_id))
            elif job.status is JobStatus.running:
                conn.execute("UPDATE kiapi_jobs SET cancel_requested = true WHERE id = %s", (job_id,))
                conn.execute("SELECT pg_notify(%s, %s)", (CANCEL_CHANNEL, job_id))
        return job

    def queued(self) -> int:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT count(*) FROM kiapi_jobs WHERE status = 'queued'").fetchone()
        return int(row[0]) if row else 0

    def queued_needs(self, limit: int) -> list[QueuedNeed]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT id, capability, capability || ':' || model, need_gb, load_gb, light, "
                                "data->>'progress_label' FROM kiapi_jobs WHERE status = 'queued' ORDER BY seq "
                                "LIMIT %s", (limit,)).fetchall()
        return [QueuedNeed(*row) for row in rows]

    def relabel(self, job_id: str, label: str) -> bool:
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute("UPDATE kiapi_jobs SET data = jsonb_set(data, '{progress_label}', to_jsonb(%s::text)) "
                               "WHERE id = %s AND status = 'queued'", (label, job_id))
            if cur.rowcount != 1:
                return False
            conn.execute("SELECT pg_notify(%s, %s)", (JOB_CHANNEL, job_id))
        return True

    def prune(self, *, ttl_s: float, max_jobs: int) -> list[str]:
        gone: list[str] = []
        with self.pool.connection() as conn:
            if ttl_s > 0:
                gone += [r[0] for r in conn.execute(
                    "DELETE FROM kiapi_jobs WHERE finished_at IS NOT NULL AND finished_at <= %s RETURNING id",
                    (time.time() - ttl_s,)).fetchall()]
            if max_jobs > 0:
                gone += [r[0] for r in conn.execute(
                    "DELETE FROM kiapi_jobs WHERE id IN (SELECT id FROM kiapi_jobs WHERE finished_at IS NOT NULL "
                    "ORDER BY finished_at DESC OFFSET %s) RETURNING id", (max_jobs,)).fetchall()]
        return gone

    # --- owner side ---------------------------------------------------------------------
    def claim(self, claimer: ClaimerState) -> Claim | None:
        args = {"caps": list(claimer.capabilities), "resident": list(claimer.resident),
                "claimable": claimer.claimable_gb, "wait": claimer.affinity_wait_s, "me": claimer.host_id,
                "live": max(claimer.lease_s, 1.0),
                "exclude": list(claimer.exclude), "light": claimer.light}
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute(_CLAIM, args).fetchone()
            if row is None:
                return None
            job_id, attempt, request = row[0], row[1] + 1, bytes(row[2])
            got = conn.execute(_SELECT + " WHERE id = %s", (job_id,)).fetchone()
            assert got is not None
            job = _decode(got)
            job.status, job.started_at, job.progress, job.progress_label = JobStatus.running, time.time(), 0.0, "running"
            job.queue_position = None
            conn.execute("UPDATE kiapi_jobs SET status = 'running', owner = %s, attempt = %s, "
                         "lease_until = now() + make_interval(secs => %s), data = %s WHERE id = %s",
                         (claimer.host_id, attempt, claimer.lease_s, _enc.encode(job).decode(), job_id))
            conn.execute("SELECT pg_notify(%s, %s)", (JOB_CHANNEL, job_id))
        return Claim(job, attempt, request)

    def renew(self, job_id: str, owner: str, attempt: int, lease_s: float) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute("UPDATE kiapi_jobs SET lease_until = now() + make_interval(secs => %s) "
                               "WHERE id = %s AND owner = %s AND attempt = %s AND status = 'running' RETURNING 1",
                               (lease_s, job_id, owner, attempt)).fetchone()
        return row is not None

    def cancel_requested(self, job_id: str) -> bool:
        with self.pool.connection() as conn:
            row = conn.execute("SELECT cancel_requested FROM kiapi_jobs WHERE id = %s", (job_id,)).fetchone()
        return row is None or bool(row[0])

    def write(self, job: Job, owner: str, attempt: int) -> None:
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute("UPDATE kiapi_jobs SET data = %s WHERE id = %s AND owner = %s AND attempt = %s "
                               "AND status = 'running'", (_enc.encode(job).decode(), job.id, owner, attempt))
            if cur.rowcount != 1:
                raise Fenced(job.id)
            conn.execute("SELECT pg_notify(%s, %s)", (JOB_CHANNEL, job.id))

    def finish(self, job: Job, owner: str, attempt: int, error: PersistedError | None) -> None:
        with self.pool.connection() as conn, conn.transaction():
            cur = conn.execute(
                "UPDATE kiapi_jobs SET status = %s, finished_at = %s, data = %s, error = %s, lease_until = NULL "
                "WHERE id = %s AND owner = %s AND attempt = %s AND status = 'running'",
                (job.status.value, job.finished_at, _enc.encode(job).decode(),
                 None if error is None else _enc.encode(error).decode(), job.id, owner, attempt))
            if cur.rowcount != 1:
                raise Fenced(job.id)
            conn.execute("SELECT pg_notify(%s, %s), pg_notify(%s, '')", (JOB_CHANNEL, job.id, WORK_CHANNEL))

    def release(self, job_id: str, owner: str, attempt: int, reason: str | None = None) -> None:
        with self.pool.connection() as conn, conn.transaction():
            row = conn.execute("SELECT data::text, status, 0 FROM kiapi_jobs WHERE id = %s AND owner = %s "
                               "AND attempt = %s AND status = 'running' FOR UPDATE", (job_id, owner, attempt)).fetchone()
            if row is None:
                raise Fenced(job_id)
            job = requeued(_decode(row), reason)
            conn.execute("UPDATE kiapi_jobs SET status = 'queued', owner = NULL, attempt = attempt - 1, "
                         "lease_until = NULL, data = %s WHERE id = %s", (_enc.encode(job).decode(), job_id))
            conn.execute("SELECT pg_notify(%s, %s), pg_notify(%s, '')", (JOB_CHANNEL, job_id, WORK_CHANNEL))

    def reap(self, *, max_attempts: int) -> list[tuple[Job, list[str]]]:
        out: list[tuple[Job, list[str]]] = []
        with self.pool.connection() as conn, conn.transaction():
            rows = conn.execute("SELECT data::text, status, 0, attempt, owner FROM kiapi_jobs WHERE status = 'running' "
                                "AND lease_until < now() FOR UPDATE SKIP LOCKED").fetchall()
            for row in rows:
                job, attempt, owner = _decode(row), row[3], row[4]
                gone = list(job.artifacts)
                error = lost(job, owner, attempt, max_attempts)
                conn.execute("UPDATE kiapi_jobs SET status = %s, finished_at = %s, owner = NULL, lease_until = NULL, "
                             "cancel_requested = false, data = %s, error = %s WHERE id = %s",
                             (job.status.value, job.finished_at, _enc.encode(job).decode(),
                              None if error is None else _enc.encode(error).decode(), job.id))
                conn.execute("SELECT pg_notify(%s, %s), pg_notify(%s, '')", (JOB_CHANNEL, job.id, WORK_CHANNEL))
                out.append((job, gone))
        return out

    # --- hosts --------------------------------------------------------------------------
    def heartbeat(self, state: HostState) -> None:
        with self.pool.connection() as conn:
            conn.execute("INSERT INTO kiapi_hosts (id, heartbeat_at, state) VALUES (%s, now(), %s) "
                         "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), state = excluded.state",
                         (state.id, _enc.encode(state).decode()))

    def hosts(self, *, live_s: float) -> list[HostState]:
        with self.pool.connection() as conn:
            rows = conn.execute("SELECT state::text, extract(epoch FROM now() - heartbeat_at) FROM kiapi_hosts "
                                "ORDER BY id").fetchall()
        out = []
        for text, age in rows:
            host = _host.decode(text)
            host.heartbeat_age_s = round(float(age), 3)
            host.live = host.heartbeat_age_s <= live_s
            out.append(host)
        return out

    def leave(self, host_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute("DELETE FROM kiapi_hosts WHERE id = %s", (host_id,))


__all__ = ["CANCEL_CHANNEL", "HOST_LOST", "JOB_CHANNEL", "PgJobBackend", "WORK_CHANNEL"]
