"""Memory accounting and model lifecycle: budget, admission, resident cache, measurement.

Importing this package never imports mlx; see :mod:`kiapi_core.memory.backends`.
"""

from .backends import MemoryBackend, MlxBackend, RssBackend, backend_for_model
from .budget import GIB, Budget, resolve_budget
from .manager import DEFAULT, ModelManager
from .warmup import parse_warmup

__all__ = ["DEFAULT", "GIB", "Budget", "MemoryBackend", "MlxBackend", "ModelManager", "RssBackend",
           "backend_for_model", "parse_warmup", "resolve_budget"]
