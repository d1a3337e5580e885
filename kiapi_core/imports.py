"""``"package.module:function"`` strings: how declarations name code imported only when needed.

One resolver for handlers and model loaders alike: importing lazily (on the model thread, on
first use) is what keeps ``import kiapi_core`` and a host start free of mlx, mflux and torch.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any

_cache: dict[str, Callable[..., Any]] = {}
_lock = threading.Lock()


def resolve_callable(value: str | Callable[..., Any], what: str = "callable") -> Callable[..., Any]:
    """``value`` itself when callable, else the object ``"package.module:attr.path"`` names,
    imported on first use and cached. Raises ValueError for a malformed string, ImportError or
    AttributeError when it names nothing."""
    if callable(value):
        return value
    with _lock:
        if value not in _cache:
            module_name, _, attr = str(value).partition(":")
            if not module_name or not attr:
                raise ValueError(f"{what} {value!r} is not of the form 'package.module:function'")
            target: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                target = getattr(target, part)
            _cache[value] = target
        return _cache[value]


__all__ = ["resolve_callable"]
