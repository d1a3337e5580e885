"""Input pins: a stored file a queued or running job reads is neither deleted nor expired, by
any host, until the job ends (one host does the same with in-memory pins, jobs/manager.py).

A pin is a row ``(job id, file id)`` written in the job's submitting transaction; it holds
while the job is queued or running, so it ends by itself whichever way the job ends (finished,
canceled, failed ``host_lost`` by another host's reaper, deleted) and survives the death of
the host that wrote it. A delete of a pinned file hides it at once (it answers 404, as on one
host) by expiring it now; the expiry sweep removes it once no active job pins it.

Submitting locks the input files' rows (``FOR SHARE``) and a delete locks its row (``FOR
UPDATE``) before it looks for pins, so a delete racing a submission either wins (the
submission answers 404) or sees the pin.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ...errors import NotFound


def pinned(column: str) -> str:
    """SQL: the file whose id is ``column`` is an input of a queued or running job."""
    return (f"EXISTS (SELECT 1 FROM kiapi_file_pins p JOIN kiapi_jobs j ON j.id = p.job_id "
            f"WHERE p.file_id = {column} AND j.status IN ('queued', 'running'))")


def pin_inputs(conn: Any, job_id: str, file_ids: Collection[str]) -> None:
    """Pin ``file_ids`` for ``job_id`` inside the submitting transaction; NotFound when one was
    deleted (or expired) since the request resolved it."""
    ids = sorted(set(file_ids))
    rows = conn.execute("SELECT id FROM kiapi_files WHERE id = ANY(%s) AND complete FOR SHARE", (ids,)).fetchall()
    gone = sorted(set(ids) - {r[0] for r in rows})
    if gone:
        raise NotFound(f"input file {gone[0]!r} was deleted while the job was being submitted; upload it "
                       "again", code="file_not_found")
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO kiapi_file_pins (job_id, file_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        [(job_id, file_id) for file_id in ids])


def delete_unless_pinned(conn: Any, file_id: str, now: float) -> tuple[bool, int | None]:
    """Delete a visible file, or hide it (expire it now) while a job pins it; ``(found, bytes
    freed or None when hidden)``. Run inside a transaction."""
    row = conn.execute("SELECT (record->>'size')::bigint FROM kiapi_files WHERE id = %s AND complete AND "
                       "(expires_at IS NULL OR expires_at > %s) FOR UPDATE", (file_id, now)).fetchone()
    if row is None:
        return False, None
    held = conn.execute("SELECT " + pinned("%s"), (file_id,)).fetchone()
    if held is not None and held[0]:
        conn.execute("UPDATE kiapi_files SET expires_at = %s WHERE id = %s", (now, file_id))
        return True, None
    conn.execute("DELETE FROM kiapi_files WHERE id = %s", (file_id,))
    return True, int(row[0] or 0)


__all__ = ["delete_unless_pinned", "pin_inputs", "pinned"]
