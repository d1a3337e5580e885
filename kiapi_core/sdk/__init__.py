"""kiapi_core.sdk: everything a kiapi plugin imports, and nothing else (plugin API version 2).

A plugin imports only from this package; a test fails when a plugin in this repository
imports anything else of kiapi_core. What is here is the boundary between the host and its
plugins, versioned by :data:`PLUGIN_API_VERSION`:

* hooks: :data:`hookimpl` (and :data:`hookspec`); the hooks themselves are documented in
  docs/plugins/hooks.md;
* declarations: :class:`Capability`, :class:`Model`, :class:`Operation`, :class:`WeightFiles`;
  :class:`KiapiDeprecationWarning` for declaration names a later release removes;
* contexts: :class:`RequestContext` for ``prepare``/``check``/``estimate``, :class:`JobContext`
  for handlers, :class:`Limits`, :class:`StoredFile`;
* errors: :class:`KiapiError` and its subclasses, :func:`error_classes` (code → class),
  :func:`error_from_code`, :class:`JobCanceled`;
* request types: :data:`FileRef` and its three variants;
* helpers: :class:`Problems`, :func:`resolve_seed`, :func:`resolve_quantize`,
  :func:`ref_summary`, :data:`QUANTIZE_LEVELS`; :func:`encode_image`, :func:`probe_image`,
  :data:`MEDIA_TYPES`, :data:`EXTENSIONS`, :data:`ImageFormat`; :func:`free_memory`,
  :func:`weights_missing_error`, :func:`is_missing_weights_error`; :data:`DEMO_NOTE`;
  :data:`SAMPLE_IMAGE` and :data:`SAMPLE_DATASET` (inline FileRefs for ``Operation.example``).

Importing it never imports mlx, mflux, torch or Pillow.
"""

from __future__ import annotations

from .. import __version__
from ..errors import (
    BadRequest,
    Conflict,
    InvalidInput,
    InvalidRequest,
    InvalidResult,
    JobCanceled,
    KiapiError,
    MemoryBudgetExceeded,
    NotFound,
    Unavailable,
    WeightsMissing,
    error_classes,
    error_from_code,
)
from ..files.models import StoredFile
from ..files.refs import FileDataURLRef, FileIDRef, FileRef, FileURLRef
from ..hookspecs import hookimpl, hookspec
from ..images import EXTENSIONS, MEDIA_TYPES, ImageFormat, encode_image, probe_image
from ..jobs.context import JobContext
from ..openapi.examples import SAMPLE_DATASET, SAMPLE_IMAGE
from ..plugin_api import PLUGIN_API_VERSION, SUPPORTED_PLUGIN_APIS
from ..settings import DEMO_NOTE
from ..validation import QUANTIZE_LEVELS, Problems, ref_summary, resolve_quantize, resolve_seed
from .context import Limits, RequestContext
from .declarations import Capability, InputKind, KiapiDeprecationWarning, Model, Operation, WeightFiles
from .helpers import free_memory, is_missing_weights_error, weights_missing_error

#: The version of this SDK is the core's.
SDK_VERSION = __version__

__all__ = [
    "DEMO_NOTE",
    "EXTENSIONS",
    "MEDIA_TYPES",
    "PLUGIN_API_VERSION",
    "QUANTIZE_LEVELS",
    "SAMPLE_DATASET",
    "SAMPLE_IMAGE",
    "SDK_VERSION",
    "SUPPORTED_PLUGIN_APIS",
    "BadRequest",
    "Capability",
    "Conflict",
    "FileDataURLRef",
    "FileIDRef",
    "FileRef",
    "FileURLRef",
    "ImageFormat",
    "InputKind",
    "InvalidInput",
    "InvalidRequest",
    "InvalidResult",
    "JobCanceled",
    "KiapiDeprecationWarning",
    "JobContext",
    "KiapiError",
    "Limits",
    "MemoryBudgetExceeded",
    "Model",
    "NotFound",
    "Operation",
    "Problems",
    "RequestContext",
    "StoredFile",
    "Unavailable",
    "WeightFiles",
    "WeightsMissing",
    "encode_image",
    "error_classes",
    "error_from_code",
    "free_memory",
    "hookimpl",
    "hookspec",
    "is_missing_weights_error",
    "probe_image",
    "ref_summary",
    "resolve_quantize",
    "resolve_seed",
    "weights_missing_error",
]
