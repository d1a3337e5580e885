"""Memory backends: how the host measures what a model load and a job really used.

A backend answers four questions on the model thread: how many bytes are active now, what was
the peak since the last reset, reset that peak, and give cached memory back to the system.

* :class:`MlxBackend` reads MLX's allocator (``mx.get_active_memory``, ``mx.get_peak_memory``,
  ``mx.reset_peak_memory``, ``mx.clear_cache``; never the deprecated ``mx.metal.*``, which
  reports 0 on the CPU backend). It never imports mlx itself: until a loader has imported
  ``mlx.core`` no MLX buffer can exist, so every number is 0 and nothing needs freeing. This
  keeps ``import kiapi_core`` and a host serving non-MLX models free of mlx.
* :class:`RssBackend` reads the process resident set size. It counts everything (Python heap,
  numpy, PIL), so it over-reports a model's share but is always available. On Linux the peak is
  ``VmHWM``, reset by writing ``5`` to ``/proc/self/clear_refs``; where that is impossible the
  peak is the largest RSS sampled since the reset (a lower bound).

Selection per operation (:func:`backend_for_model`): the operation's ``memory_backend``
(``"mlx"`` or ``"rss"``) when declared; else ``model.info["memory_backend"]``; else RSS for an
operation declared ``uses_mlx=False`` (Pillow, numpy, torch: MLX counters would read 0 for it
even with mlx installed next to it); else MLX when mlx is installed (the models this host is
built for run on MLX), else RSS.
"""

from __future__ import annotations

import functools
import importlib.util
import resource
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class MemoryBackend(Protocol):
    """What the model manager needs from a memory meter. Called on the model thread only."""

    name: str

    def active_bytes(self) -> int:
        """Bytes in use now."""
        ...

    def reset_peak(self) -> None:
        """Start a new peak measurement (called when a job begins)."""
        ...

    def peak_bytes(self) -> int:
        """Highest active bytes since the last :meth:`reset_peak`."""
        ...

    def free_caches(self) -> None:
        """Return cached, unused memory to the system (after an eviction or a transient)."""
        ...


class MlxBackend:
    """MLX allocator counters through the top-level ``mx`` API, without importing mlx."""

    name = "mlx"

    @staticmethod
    def _mx() -> Any | None:
        return sys.modules.get("mlx.core")

    def active_bytes(self) -> int:
        mx = self._mx()
        return int(mx.get_active_memory()) if mx is not None else 0

    def reset_peak(self) -> None:
        mx = self._mx()
        if mx is not None:
            mx.reset_peak_memory()

    def peak_bytes(self) -> int:
        mx = self._mx()
        return int(mx.get_peak_memory()) if mx is not None else 0

    def free_caches(self) -> None:
        mx = self._mx()
        if mx is not None:
            mx.clear_cache()


class RssBackend:
    """Process resident set size (``/proc/self/status`` on Linux, ``getrusage`` elsewhere)."""

    name = "rss"
    _STATUS = Path("/proc/self/status")
    _CLEAR_REFS = Path("/proc/self/clear_refs")

    def __init__(self) -> None:
        self._hwm_resettable = True
        self._sampled_peak = 0

    def active_bytes(self) -> int:
        value = self._status_field("VmRSS")
        if value is None:
            # No /proc (macOS): ru_maxrss is the process high-water mark (bytes on macOS,
            # KiB on Linux); the best cheap, dependency-free stand-in for current RSS.
            value = _maxrss_bytes()
        self._sampled_peak = max(self._sampled_peak, value)
        return value

    def reset_peak(self) -> None:
        if self._hwm_resettable:
            try:
                self._CLEAR_REFS.write_text("5")
            except OSError:
                self._hwm_resettable = False
        self._sampled_peak = 0
        self.active_bytes()

    def peak_bytes(self) -> int:
        current = self.active_bytes()
        hwm = self._status_field("VmHWM") if self._hwm_resettable else None
        return max(hwm or 0, self._sampled_peak, current)

    def free_caches(self) -> None:
        """Nothing to return: RSS has no allocator cache of its own. Freed Python objects are
        collected once by the manager when it freed a model (a second collection here cost
        another 10-25 ms with mflux imported, and one after every job)."""

    def _status_field(self, field: str) -> int | None:
        try:
            text = self._STATUS.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith(field + ":"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    return int(parts[1]) * 1024  # the kernel reports kB
        return None


def _maxrss_bytes() -> int:
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024


@functools.cache
def mlx_installed() -> bool:
    """True when mlx can be imported (checked once, without importing it: ``find_spec`` walks
    ``sys.path`` and cost up to a third of a no-op job when it ran per job)."""
    try:
        return importlib.util.find_spec("mlx") is not None
    except (ImportError, ValueError):
        return False


_MLX = MlxBackend()
_RSS = RssBackend()


def backend_for_model(model: Any, operation: Any = None) -> MemoryBackend:
    """The backend measuring ``operation`` of ``model`` (a :class:`~kiapi_core.registry.Model`
    and :class:`~kiapi_core.registry.Operation`, either may be ``None``).

    Backends are shared singletons: the counters are process-wide anyway.
    """
    declared = getattr(operation, "memory_backend", None)
    if declared is None:
        info = getattr(model, "info", None) or {}
        declared = info.get("memory_backend") if hasattr(info, "get") else None
    if declared == "rss":
        return _RSS
    if declared == "mlx":
        return _MLX
    if operation is not None and getattr(operation, "uses_mlx", True) is False:
        return _RSS
    return _MLX if mlx_installed() else _RSS
