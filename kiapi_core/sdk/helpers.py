"""Small helpers plugins would otherwise copy: freeing memory after a model, and telling a
"weights are not there" load failure from a real bug."""

from __future__ import annotations

import gc
import logging
import sys

from ..errors import WeightsMissing
from ..weights.presence import is_missing_weights_error

log = logging.getLogger("kiapi.sdk")


def free_memory() -> None:
    """Collect garbage and return MLX's cached buffers to the system.

    Call it after dropping the last reference to a model (a runtime's ``close()``). Never
    imports mlx: when no loader imported it, there is nothing of MLX's to free.
    """
    gc.collect()
    mx = sys.modules.get("mlx.core")
    if mx is not None:
        try:
            mx.clear_cache()
        except Exception:  # freeing is best effort, never a job failure
            log.debug("mx.clear_cache failed", exc_info=True)


def weights_missing_error(exc: BaseException, what: str, activate: str | None = None) -> WeightsMissing | None:
    """A :class:`~kiapi_core.errors.WeightsMissing` (503) for a load that failed because weight
    files are missing or incomplete, or ``None`` when ``exc`` is some other failure (re-raise it).

    :param what: the model, as the message should name it (``"ernie:turbo"``).
    :param activate: the command that fetches the weights (``"kiapi activate ernie:turbo"``).
    """
    if not is_missing_weights_error(exc):
        return None
    fix = f"; run `{activate}`" if activate else ""
    return WeightsMissing(f"the weights of {what} are missing or incomplete ({exc}){fix}", activate=activate)


__all__ = ["free_memory", "is_missing_weights_error", "weights_missing_error"]
