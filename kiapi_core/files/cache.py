"""CacheBound: a FileStore used as a cache of files kept elsewhere, held under a size.

A shared store (:class:`~kiapi_core.cluster.pg.PgFileStore`) keeps local copies of its files
in a :class:`~.store.FileStore`, through its public API only. The copies' total is tracked as
they are added (measured from disk once, then kept up to date), and as soon as it passes the
bound the least recently used copies are removed (their files stay where they are kept). A
copy stays while a job here has it pinned, and while it was used in the last :data:`IN_USE_S`
seconds: a job's input is fetched a moment before it is pinned, and a download just served
may still be read. So the total may pass the bound by what is in use, never by what is idle.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection

from ..errors import NotFound
from .quota import measure
from .store import FileStore

#: Copies used (read, fetched or stored) this recently are never evicted.
IN_USE_S = 60.0


class CacheBound:
    """Keeps ``store`` under ``max_bytes``; call :meth:`added` after each new copy."""

    def __init__(self, store: FileStore, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._trimming = threading.Lock()
        self._total: int | None = None  # unknown until measured

    def added(self, size: int) -> None:
        """A copy of ``size`` bytes was added: trim when the total passes the bound."""
        with self._lock:
            if self._total is None:
                self._total = measure(self.store.root)  # counts the new copy already
            else:
                self._total += size
            over = self._total > self.max_bytes
        if over:
            self.trim()

    def trim(self, keep_only: Collection[str] | None = None, *, now: float | None = None) -> int:
        """Remove copies of files not in ``keep_only`` (when given), then the least recently
        used idle ones until the total fits. Returns the copies removed. One trim at a time: a
        call while another runs returns 0 at once (that one does the work)."""
        if not self._trimming.acquire(blocking=False):
            return 0
        try:
            return self._trim(keep_only, time.time() if now is None else now)
        finally:
            self._trimming.release()

    def _trim(self, keep_only: Collection[str] | None, now: float) -> int:
        removed, total = 0, 0
        idle: list[tuple[float, int, str]] = []
        for record in self.store.list():
            file_id = record.file_id
            if keep_only is not None and file_id not in keep_only:
                removed += self._remove(file_id)
                continue
            try:
                st = self.store.get(file_id).path.stat()
            except (NotFound, OSError):  # removed meanwhile
                continue
            total += st.st_size
            if not self.store.pinned(file_id) and now - st.st_mtime > IN_USE_S:
                idle.append((st.st_mtime, st.st_size, file_id))
        for _, size, file_id in sorted(idle):
            if total <= self.max_bytes:
                break
            removed += self._remove(file_id)
            total -= size
        with self._lock:
            self._total = total
        return removed

    def _remove(self, file_id: str) -> int:
        with contextlib.suppress(NotFound):
            self.store.delete(file_id)  # a pinned copy's bytes stay until the job lets go
            return 1
        return 0


__all__ = ["IN_USE_S", "CacheBound"]
