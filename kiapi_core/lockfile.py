"""One user of a data directory at a time: ``<data_dir>/server.lock``.

``kiapi serve`` holds the lock for its lifetime and ``kiapi check`` for its run, so a check never
loads models beside a live server (the two would each believe they own the memory budget) and
two servers never share jobs and files. The lock is ``fcntl.flock`` on an open file: the kernel
releases it when the process dies, so a crash never leaves a stale lock behind. The file
itself stays (deleting it would race with a new holder); its content names the last holder.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking (kiapi targets macOS and Linux)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "server.lock"


class LockHeld(RuntimeError):
    """Another process holds the data directory; the message names it and what to do."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"the data directory {path.parent} is in use by {holder or 'another kiapi process'} "
                         f"(lock {path})")


class DataDirLock:
    """An exclusive, non-blocking lock on a data directory; a context manager."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir).expanduser() / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, owner: str) -> None:
        """Take the lock or raise :class:`LockHeld` at once; ``owner`` describes this process."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read(fd)
                os.close(fd)
                raise LockHeld(self.path, holder) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{owner} (pid {os.getpid()})\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> DataDirLock:
        self.acquire(owner="kiapi")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def holder(data_dir: str | Path) -> str | None:
    """Who holds ``data_dir`` right now (``None`` when free); takes and drops the lock to know."""
    lock = DataDirLock(data_dir)
    if not lock.path.exists():
        return None
    try:
        lock.acquire(owner="probe")
    except LockHeld as exc:
        return exc.holder or "another kiapi process"
    lock.release()
    return None


def _read(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return os.read(fd, 512).decode(errors="replace").strip()
    except OSError:
        return ""
