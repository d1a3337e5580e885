"""Files: the store behind the Files API, its routes, and FileRef resolution.

* :mod:`.store` – :class:`FileStore` (atomic, expiring, id-validated storage on disk);
* :mod:`.routes` – ``/v1/files`` endpoints (``routes()``);
* :mod:`.fetch` – SSRF-safe URL downloads (:class:`URLFetcher`);
* :mod:`.resolve` – ``resolve_inputs()``: FileRefs in a request → stored files;
* :mod:`.refs` / :mod:`.models` – the FileRef union and FileRecord/StoredFile.

Only the light pieces are imported here; ``routes``, ``fetch`` and ``resolve`` load httpx
and python-multipart, so import them where they are used.
"""

from .models import FileRecord, StoredFile
from .refs import FileDataURLRef, FileIDRef, FileRef, FileURLRef
from .store import FileStore

__all__ = ["FileRecord", "StoredFile", "FileRef", "FileIDRef", "FileURLRef", "FileDataURLRef",
           "FileStore"]
