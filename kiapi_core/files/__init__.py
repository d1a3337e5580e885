"""Files: the store behind the Files API, its routes, and FileRef resolution.

* :mod:`.blobstore` – :class:`BlobStore`, the storage interface everything else uses;
* :mod:`.store` – :class:`FileStore`, the local one (atomic, expiring, id-validated storage on
  disk), with :mod:`.sidecars` (ids, records, publishing and removing), :mod:`.writer`
  (:class:`BlobWriter`, streamed uploads), :mod:`.quota` (``KIAPI_MAX_STORAGE_GB``) and
  :mod:`.durability` (syncs, recently stored files);
* :mod:`.routes` – ``/v1/files`` endpoints (``routes()``);
* :mod:`.fetch` – SSRF-safe URL downloads (:class:`URLFetcher`);
* :mod:`.resolve` – ``resolve_inputs()``: FileRefs in a request → stored files;
* :mod:`.refs` / :mod:`.models` – the FileRef union and FileRecord/StoredFile.

Only the light pieces are imported here; ``routes``, ``fetch`` and ``resolve`` load httpx
and python-multipart, so import them where they are used.
"""

from .blobstore import BlobStore
from .models import FileRecord, StoredFile
from .refs import FileDataURLRef, FileIDRef, FileRef, FileURLRef
from .store import FileStore

__all__ = ["BlobStore", "FileRecord", "StoredFile", "FileRef", "FileIDRef", "FileURLRef", "FileDataURLRef",
           "FileStore"]
