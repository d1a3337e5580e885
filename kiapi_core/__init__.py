"""kiapi_core: a minimal host for generative-image capability plugins.

Plugins import :mod:`kiapi_core.sdk` (plugin API version 2) and nothing else. The names
exported here are the plugin API version 1 surface, kept for one more release so existing
plugins keep working: a :class:`Capability` made from them is called the version-1 way.
Importing it never imports mlx, mflux or torch.
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
from .plugin_api import PLUGIN_API_VERSION

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

from .hookspecs import hookspec  # re-exported for completeness
