"""Job records that survive restarts: SQLite (stdlib ``sqlite3``) under ``KIAPI_DATA_DIR``.

:class:`SqliteJobStore` is the in-memory store (reads, listing and retention stay dict-fast and
never touch the disk) with every change written through to ``<data_dir>/jobs.sqlite3``:

* one connection in WAL mode with ``synchronous=NORMAL``: a commit is an append to the
  write-ahead log without an fsync. A power cut may lose the last moments of changes;
* written behind: :meth:`save` (called under the manager's lock, also from the event loop)
  only encodes the record and queues it, coalesced by job id; a writer thread commits whatever
  is queued in one transaction, without the manager's lock. Before, each SQL write ran under
  that lock and the event loop waited behind it for a third of its busy time. A terminal
  state is committed (:meth:`flush`, called by the manager outside its lock) before the job's
  waiters hear of it, so an answered job survives ``kill -9``; other changes (submissions,
  starts, progress) of the last :data:`WRITE_DELAY_S` (10 ms) may be lost when the process is
  killed; :meth:`close` writes everything queued;
* status changes and terminal states are always written; other changes of an active job
  (progress, queue position) at most once per :data:`ACTIVE_WRITE_INTERVAL_S` per job, since
  after a crash an active job ends ``failed`` anyway and its progress no longer matters;
* each row holds the Job as JSON plus the columns retention and idempotency need.

Opening (:meth:`open`, when the host starts serving, under the data-directory lock) loads the
kept records and ends every job that was ``queued`` or ``running`` when the previous server
died ``failed`` with ``error_code`` ``server_restarted``: its handler state (model, request,
resolved inputs) is gone, and silently re-running generative work could surprise a client who
already retried. Building a host without serving (CLI commands) never opens the database.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

from .models import Job, JobStatus
from .store import MemoryJobStore

log = logging.getLogger("kiapi.jobs")

#: Seconds the writer thread waits after the first queued change, to commit more in one go.
WRITE_DELAY_S = 0.01
#: Seconds without changes after which the writer thread stops polling and blocks.
WRITER_IDLE_S = 0.5
#: Seconds between writes of an active job's progress-only changes.
ACTIVE_WRITE_INTERVAL_S = 1.0
SCHEMA_VERSION = 1
RESTARTED_CODE = "server_restarted"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    finished_at REAL,
    idem_key TEXT,
    idem_fp TEXT,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem_key ON jobs(idem_key) WHERE idem_key IS NOT NULL;
"""

_UPSERT = ("INSERT INTO jobs (id, status, finished_at, idem_key, idem_fp, data) VALUES (?, ?, ?, ?, ?, ?) "
           "ON CONFLICT(id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at, "
           "data = excluded.data")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Job)


class SqliteJobStore(MemoryJobStore):
    """A :class:`MemoryJobStore` written through to an SQLite database at ``path``."""

    def __init__(self, path: Path | str, *, ttl_s: float, max_jobs: int) -> None:
        super().__init__(ttl_s=ttl_s, max_jobs=max_jobs)
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._db_lock = threading.Lock()
        self._written: dict[str, tuple[JobStatus, float]] = {}  # id -> (status, when) last written
        self._dirty: set[str] = set()
        # Write-behind queue: job id -> encoded row, or None to delete the row. Dict order keeps
        # each id's first position, so new jobs are inserted in creation order.
        self._queued: dict[str, tuple[object, ...] | None] = {}
        self._queue_lock = threading.Lock()
        self._wake = threading.Event()
        self._writer_idle = True  # blocked on _wake, rather than polling (see _write_behind)
        self._writer: threading.Thread | None = None
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------
    def open(self) -> list[Job]:
        if self._conn is not None:
            return []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version > SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(f"{self.path} was written by a newer kiapi (schema {version}); "
                               "upgrade kiapi or use another data directory")
        self._conn = conn
        recovered = self._load()
        self.prune()  # retention applies to what was kept, too (deletes the rows)
        self.flush()
        self._stopping = False
        self._writer = threading.Thread(target=self._write_behind, name="kiapi-job-store", daemon=True)
        self._writer.start()
        return recovered

    def _load(self) -> list[Job]:
        assert self._conn is not None
        rows = self._conn.execute("SELECT id, idem_key, idem_fp, data FROM jobs ORDER BY seq").fetchall()
        now = time.time()
        recovered: list[Job] = []
        finished: list[tuple[float, str]] = []
        for job_id, key, fingerprint, data in rows:
            try:
                job = _decoder.decode(data)
            except msgspec.DecodeError:
                log.warning("job store: dropping unreadable record %s", job_id)
                self._execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                continue
            if not job.status.terminal:
                was = job.status.value
                job.status, job.finished_at, job.queue_position = JobStatus.failed, now, None
                job.progress_label = JobStatus.failed.value
                job.error = (f"the server restarted while the job was {was}; it did not finish. "
                             "Submit it again (with a new Idempotency-Key, if you used one)")
                job.error_code = RESTARTED_CODE
                recovered.append(job)
            self._jobs[job.id] = job
            if key is not None:
                self._idempotency[key] = (job.id, fingerprint or "")
                self._key_of[job.id] = key
            if job.status.terminal:
                finished.append((job.finished_at or now, job.id))
        for finished_at, job_id in sorted(finished):
            self._finished[job_id] = finished_at
        for job in recovered:
            self._write(job)
        if recovered:
            log.warning("job store: %d job(s) were queued or running when the server stopped; "
                        "marked failed (%s)", len(recovered), RESTARTED_CODE)
        log.info("job store: %d job record(s) loaded from %s", len(self._jobs), self.path)
        return recovered

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            self._stopping = True
            self._wake.set()
            writer.join(timeout=30)
        for job_id in list(self._dirty):
            job = self._jobs.get(job_id)
            if job is not None:
                self._write(job)
        self._dirty.clear()
        self.flush()
        with self._db_lock:
            conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.close()
        except sqlite3.Error:  # pragma: no cover
            log.exception("job store: closing %s failed", self.path)

    # --- writes ---------------------------------------------------------------------------
    def save(self, job: Job) -> None:
        if job.id not in self._jobs:
            return  # forgotten meanwhile (deleted while running): do not resurrect it
        super().save(job)
        last = self._written.get(job.id)
        now = time.monotonic()
        if (last is not None and last[0] is job.status and not job.status.terminal
                and now - last[1] < ACTIVE_WRITE_INTERVAL_S):
            self._dirty.add(job.id)
            return
        self._write(job)

    def _write(self, job: Job) -> None:
        """Queue the record's current state (encoded now: the live record keeps changing)."""
        key = self._key_of.get(job.id)
        fingerprint = self._idempotency.get(key, ("", None))[1] if key is not None else None
        row = (job.id, job.status.value, job.finished_at, key, fingerprint, _encoder.encode(job))
        self._written[job.id] = (job.status, time.monotonic())
        self._dirty.discard(job.id)
        self._enqueue(job.id, row)

    def _enqueue(self, job_id: str, row: tuple[object, ...] | None) -> None:
        with self._queue_lock:
            self._queued[job_id] = row
            wake, self._writer_idle = self._writer_idle, False
        if wake:  # otherwise the writer is polling and will see this row
            self._wake.set()

    def flush(self) -> None:
        """Commit every queued change now, on the calling thread (the writer thread, close, tests)."""
        with self._db_lock:
            with self._queue_lock:
                batch, self._queued = self._queued, {}
            if not batch or self._conn is None:
                return
            upserts = [row for row in batch.values() if row is not None]
            deletes = [(job_id,) for job_id, row in batch.items() if row is None]
            try:
                with self._conn:  # one transaction for the whole batch
                    self._conn.execute("BEGIN")
                    if upserts:
                        self._conn.executemany(_UPSERT, upserts)
                    if deletes:
                        self._conn.executemany("DELETE FROM jobs WHERE id = ?", deletes)
            except sqlite3.Error:
                # The jobs go on in memory; only their persistence is lost (disk full, I/O error).
                log.exception("job store: could not write %d job change(s) to %s", len(batch), self.path)

    def _write_behind(self) -> None:
        """Commit what gathered every :data:`WRITE_DELAY_S` while changes keep coming, then,
        after :data:`WRITER_IDLE_S` without any, block until the next one. While it polls, a
        change wakes no thread (a job's end is committed by the manager's :meth:`flush` anyway):
        waking the writer for every job was a context switch per request."""
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            quiet_s = 0.0
            while not self._stopping and quiet_s < WRITER_IDLE_S:
                time.sleep(WRITE_DELAY_S)
                with self._queue_lock:
                    pending = bool(self._queued)
                if pending:
                    self.flush()
                    quiet_s = 0.0
                else:
                    quiet_s += WRITE_DELAY_S
            with self._queue_lock:
                self._writer_idle = not self._queued
            if not self._writer_idle:
                self._wake.set()  # something arrived while going idle: go round again

    def _execute(self, sql: str, args: tuple[object, ...]) -> None:
        with self._db_lock:
            if self._conn is None:
                return
            try:
                self._conn.execute(sql, args)
            except sqlite3.Error:
                log.exception("job store: %s failed", sql.split()[0])

    def remove(self, job_id: str) -> Job | None:
        job = super().remove(job_id)
        self._forget(job_id)
        self._enqueue(job_id, None)
        return job

    def prune(self, now: float | None = None) -> list[str]:
        gone = super().prune(now)
        for job_id in gone:
            self._forget(job_id)
            self._enqueue(job_id, None)
        return gone

    def _forget(self, job_id: str) -> None:
        self._written.pop(job_id, None)
        self._dirty.discard(job_id)


__all__ = ["RESTARTED_CODE", "SqliteJobStore"]
