"""Calling a plugin's model loader, and closing what it returned."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from ..imports import resolve_callable

log = logging.getLogger("kiapi.memory")


#: Job params key (set by the core) for the memory decoding the job's image inputs takes.
INPUT_GB = "input_gb"


def raw_estimate(operation: Any, params: Mapping[str, Any], model: Any) -> float:
    """The plugin's own estimate of a request's peak above the weights (0 when it has none),
    plus what decoding its image inputs takes (``params["input_gb"]``, set by the core)."""
    estimate = getattr(operation, "estimate", None)
    own = max(0.0, float(estimate(params, model))) if estimate is not None else 0.0
    return own + max(0.0, float(params.get(INPUT_GB, 0.0) or 0.0))


def resolve_loader(loader: Any) -> Callable[..., Any] | None:
    """``"package.module:function"``, imported only now (on the model thread), or a callable.

    Importing lazily is what keeps ``import kiapi_core`` and a host start free of mlx/mflux.
    """
    return None if loader is None else resolve_callable(loader, "model loader")


def close_runtime(runtime: Any, what: str) -> None:
    """Call ``runtime.close()`` when it has one; a failure is logged, never raised."""
    close = getattr(runtime, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # freeing must go on; the job's outcome is already decided
        log.exception("closing %s failed", what)
