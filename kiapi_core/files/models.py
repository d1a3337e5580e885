"""File records: what the Files API serves about a stored file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec


class FileRecord(msgspec.Struct, kw_only=True):
    """Metadata of one stored file, as served by ``GET /v1/files/{id}``."""

    file_id: str
    filename: str
    content_type: str
    size: int
    created_at: float
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Seconds since the epoch after which the file expires, or ``None`` (kept until deleted).
    expires_at: float | None = None
    sha256: str | None = None


class StoredFile(msgspec.Struct, kw_only=True, frozen=True):
    """A stored file as handlers see it: the record plus where its bytes are on disk."""

    record: FileRecord
    path: Path

    @property
    def file_id(self) -> str:
        return self.record.file_id

    @property
    def content_type(self) -> str:
        return self.record.content_type

    @property
    def filename(self) -> str:
        return self.record.filename
