"""FileRef: how a request points at an input file.

A FileRef is one of three objects told apart by ``type``: a Files-API id, an http(s) URL, or a
data URL. Plugins use :data:`FileRef` as a field type in their request Structs; the core finds
every FileRef in a decoded request and resolves it to a stored file before the job is queued.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

_NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class FileIDRef(msgspec.Struct, tag="file_id", tag_field="type", frozen=True, kw_only=True):
    """A file already stored through the Files API."""

    file_id: _NonEmpty


class FileURLRef(msgspec.Struct, tag="url", tag_field="type", frozen=True, kw_only=True):
    """An http(s) URL the server downloads before queueing the job."""

    url: _NonEmpty


class FileDataURLRef(msgspec.Struct, tag="data_url", tag_field="type", frozen=True, kw_only=True):
    """An inline ``data:<media type>;base64,<payload>`` URL."""

    data_url: _NonEmpty


FileRef = Union[FileIDRef, FileURLRef, FileDataURLRef]  # noqa: UP007 - a named alias for OpenAPI
FILE_REF_TYPES = (FileIDRef, FileURLRef, FileDataURLRef)
