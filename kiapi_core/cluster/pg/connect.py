"""Connections: a small thread-safe pool of psycopg connections, and the schema.

Every connection has a ``statement_timeout`` so that a stalled database turns into an error in
bounded time instead of a thread stuck forever (the lease watchdog does not rely on it, though).

A database that cannot be reached (stopped, restarting, a network cut) surfaces as
:class:`~kiapi_core.errors.Unavailable` (503 ``cluster_database_unavailable`` with
``Retry-After``) rather than a driver error, and a broken connection empties the idle pool (after
a server restart every idle connection is dead), so the next call reconnects: hosts recover by
themselves when the database is back.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Iterator

import psycopg

from ...errors import Unavailable
from .schema import SCHEMA, SCHEMA_VERSION

log = logging.getLogger("kiapi.cluster")

#: Seconds a single statement may take before PostgreSQL cancels it.
STATEMENT_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 10
#: Seconds a client is told to wait before retrying while the database is unreachable.
RETRY_AFTER_S = 5
_UNREACHABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def _out_of_reach(exc: BaseException) -> bool:
    """A client-side failure (no SQLSTATE: connection lost) or an operator intervention (class
    57: shutdown, restart, a statement timeout), as opposed to an error the server answered."""
    sqlstate = getattr(exc, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("57")


def unreachable(exc: BaseException) -> Unavailable:
    """The 503 for a request that needed the database while it could not be reached (the
    cause goes to the log and ``/health``, not to clients)."""
    # Not logged here (every request would): the host's pulse logs the outage once, with the cause.
    log.debug("cluster database call failed: %s", exc)
    return Unavailable("the cluster's database (PostgreSQL) cannot be reached right now; retry in a few "
                       "seconds (GET /health shows the cause)", code="cluster_database_unavailable",
                       headers={"Retry-After": str(RETRY_AFTER_S)})


class Pool:
    """Up to ``size`` idle connections kept; more are opened on demand and closed after use."""

    def __init__(self, url: str, *, size: int = 8) -> None:
        self.url = url
        self._idle: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue(maxsize=size)
        self._closed = False
        self._lock = threading.Lock()

    def _open(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                               options=f"-c statement_timeout={int(STATEMENT_TIMEOUT_S * 1000)}",
                               application_name="kiapi")

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A connection in autocommit mode; use ``with conn.transaction():`` for more."""
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            try:
                conn = self._open()
            except _UNREACHABLE as exc:
                raise unreachable(exc) from exc
        try:
            yield conn
        except _UNREACHABLE as exc:
            broken = conn.closed or conn.broken
            conn.close()
            if broken:
                self._drain()  # the server went away: the other idle connections are dead too
            if broken or _out_of_reach(exc):
                raise unreachable(exc) from exc
            raise  # an answer from a reachable server (a full disk ...): the caller's to judge
        except BaseException:
            if conn.closed or conn.broken or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.close()
            else:
                self._put(conn)
            raise
        self._put(conn)

    def _put(self, conn: psycopg.Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        try:
            self._idle.put_nowait(conn)
        except queue.Full:
            conn.close()

    def _drain(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def connect_pool(url: str, *, size: int = 8) -> Pool:
    """A pool on ``url`` with the schema created."""
    pool = Pool(url, size=size)
    prepare_schema(pool)
    return pool


def prepare_schema(pool: Pool) -> None:
    """Create the tables (idempotent; a lock serialises hosts starting together)."""
    with pool.connection() as conn, conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7312018)")
        conn.execute(SCHEMA)
        row = conn.execute("SELECT version FROM kiapi_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO kiapi_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        elif row[0] > SCHEMA_VERSION:
            raise RuntimeError(f"the cluster database was set up by a newer kiapi (schema {row[0]}); "
                               "upgrade kiapi on this host")


__all__ = ["Pool", "connect_pool", "prepare_schema", "unreachable"]
