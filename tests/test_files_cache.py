"""CacheBound: a FileStore used as a cache stays under its size as copies are added, least
recently used first, never removing a copy a job pinned or one in use."""

from __future__ import annotations

import os
import time

from kiapi_core.files.cache import IN_USE_S, CacheBound
from kiapi_core.files.store import FileStore

MiB = 1024 * 1024


def _age(store: FileStore, file_id: str, seconds: float) -> None:
    """Make a copy look last used ``seconds`` ago (instead of sleeping)."""
    at = time.time() - seconds
    os.utime(store.get(file_id).path, (at, at))


def _held(store: FileStore) -> list[str]:
    return sorted(r.file_id for r in store.list())


def test_copies_past_the_bound_go_least_recently_used_first_as_they_are_added(tmp_path):
    store = FileStore(tmp_path / "cache")
    bound = CacheBound(store, int(2.5 * MiB))
    ids = []
    for i in range(4):
        stored = store.put_bytes(bytes([i]) * MiB, filename=f"{i}.bin")
        ids.append(stored.file_id)
        for age, file_id in enumerate(reversed(ids[:-1]), start=1):  # older files, used longer ago
            if store.exists(file_id):
                _age(store, file_id, IN_USE_S + 10 * age)
        bound.added(stored.record.size)
    assert _held(store) == sorted(ids[2:])  # each time 3 MiB passed 2.5, the least recently used went
    assert sum(store.get(i).record.size for i in _held(store)) <= bound.max_bytes


def test_pinned_and_recently_used_copies_stay_even_past_the_bound(tmp_path):
    store = FileStore(tmp_path / "cache")
    bound = CacheBound(store, MiB)
    pinned, in_use, idle = (store.put_bytes(bytes([i]) * MiB, filename=f"{i}.bin").file_id for i in range(3))
    _age(store, pinned, 3 * IN_USE_S)
    _age(store, idle, 2 * IN_USE_S)
    store.pin([pinned])
    assert bound.trim() == 1
    assert _held(store) == sorted([pinned, in_use])  # over the bound only by what is in use
    store.unpin([pinned])
    _age(store, in_use, 2 * IN_USE_S)
    assert bound.trim() == 1 and _held(store) == [in_use]  # now the older one goes


def test_trim_removes_copies_of_files_no_longer_kept_elsewhere(tmp_path):
    store = FileStore(tmp_path / "cache")
    bound = CacheBound(store, 10 * MiB)
    kept, gone = (store.put_bytes(b"x" * 10, filename=f"{i}.bin").file_id for i in range(2))
    store.pin([gone])  # a job still reads it: hidden now, its bytes stay until it lets go
    assert bound.trim(keep_only={kept}) == 1
    assert _held(store) == [kept]
    blobs = [n for n in os.listdir(store.root) if n.startswith(gone)]
    assert len(blobs) == 1
    store.unpin([gone])
    assert not [n for n in os.listdir(store.root) if n.startswith(gone)]
