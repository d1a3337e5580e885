"""kiapi_core: a minimal host for generative-image capability plugins.

Plugin authors need only what this module exports: ``hookimpl`` to mark hook implementations,
the declarations (:class:`Capability`, :class:`Model`, :class:`Operation`,
:class:`WeightFiles`), the FileRef types for request Structs, the errors to raise, and the
:class:`JobContext` handlers receive. Importing it never imports mlx, mflux or torch.
"""

from .errors import (
    BadRequest,
    InvalidInput,
    InvalidRequest,
    JobCanceled,
    KiapiError,
    Unavailable,
    WeightsMissing,
)
from .files.refs import FileDataURLRef, FileIDRef, FileRef, FileURLRef
from .hookspecs import hookimpl
from .jobs.context import JobContext
from .registry import Capability, Model, Operation, WeightFiles

__version__ = "0.1.0"
#: Bumped when a hook or declaration changes incompatibly; plugins state the core range they support.
from .plugin_api import PLUGIN_API_VERSION  # noqa: E402

__all__ = [
    "BadRequest",
    "Capability",
    "FileDataURLRef",
    "FileIDRef",
    "FileRef",
    "FileURLRef",
    "InvalidInput",
    "InvalidRequest",
    "JobCanceled",
    "JobContext",
    "KiapiError",
    "Model",
    "Operation",
    "PLUGIN_API_VERSION",
    "Unavailable",
    "WeightFiles",
    "WeightsMissing",
    "__version__",
    "hookimpl",
    "hookspec",
]

from .hookspecs import hookspec  # noqa: E402  (re-exported for completeness)
