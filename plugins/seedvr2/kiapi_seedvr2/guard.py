"""Guard against the MLX 0.32.2 CPU-backend crash on empty scans.

Why this exists
---------------
On MLX's **CPU** backend, ``mx.cumsum`` over an empty array (or an empty axis) does not raise:
it kills the whole process with ``SIGFPE`` ("Floating point exception", exit code 136). So do
``cumprod``, ``cummax``, ``logcumsumexp``, ``sort`` and ``argsort``. The Metal backend is fine.

SeedVR2's window attention always hits it: ``WindowPartitioner._unflatten_list``
(``mflux/models/seedvr2/model/seedvr2_transformer/window.py:88``) computes
``mx.cumsum(mx.array(lengths[:-1]))`` with one length per batch element, i.e. an empty array for
our batch of one, and ``attention.py:101/135/143`` do the same when a block has a single window.
Without the guard **every** SeedVR2 run on Linux without a GPU takes the server down.

The fix: replace ``mlx.core.cumsum`` with a wrapper that returns an empty input unchanged (the
cumulative sum of nothing is nothing, same shape) and defers to MLX otherwise. Every call site in
mflux looks ``mx.cumsum`` up on the module at call time, so patching the module attribute is
enough. The wrapper costs one attribute read per call and is installed only where it is needed
(the default device is the CPU, or no GPU backend is available); installing twice is a no-op.
Only ``cumsum`` is wrapped because it is the only scan SeedVR2 calls on possibly-empty arrays
(``window.py:124`` argsorts a non-empty index).

Remove this module once kiapi requires an MLX release that fixes the CPU scan kernels.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_MARK = "_kiapi_empty_safe"


def needs_guard() -> bool:
    """True when MLX evaluates on the CPU backend (default device CPU, or no GPU available)."""
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.cpu:
        return True
    try:
        return not mx.is_available(mx.gpu)
    except AttributeError:  # pragma: no cover - older MLX without mx.is_available
        return False


def is_installed() -> bool:
    import mlx.core as mx

    return bool(getattr(mx.cumsum, _MARK, False))


def install_cumsum_guard(*, force: bool = False) -> bool:
    """Install the guard if MLX runs on the CPU (or ``force``). Returns whether it is active."""
    import mlx.core as mx

    with _lock:
        if is_installed():
            return True
        if not force and not needs_guard():
            return False
        original = mx.cumsum

        def cumsum(a: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(a, "size", 1) == 0:
                return a
            return original(a, *args, **kwargs)

        cumsum.__doc__ = original.__doc__
        cumsum.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(cumsum, _MARK, True)
        mx.cumsum = cumsum
        return True


def uninstall_cumsum_guard() -> None:
    """Restore MLX's own ``cumsum`` (tests only: a crash-reproduction subprocess needs it)."""
    import mlx.core as mx

    with _lock:
        if is_installed():
            mx.cumsum = mx.cumsum.__wrapped__  # type: ignore[attr-defined]  # set by install_cumsum_guard
