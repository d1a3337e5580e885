"""The memory budget: how many GiB models and jobs may use together.

Resolution order (first that applies wins):

1. the ``memory_limit_gb`` setting (``KIAPI_MEMORY_LIMIT_GB``);
2. on macOS, when mlx is *already* imported, MLX's ``max_recommended_working_set_size``
   (Metal's recommended working set: what the GPU can keep wired without paging);
3. a share of physical memory (capped by a cgroup memory limit when one applies):
   * macOS: about Metal's own rule for the recommended working set, 2/3 of RAM up to
     32 GB and 3/4 above, so the budget matches what MLX would report without importing it;
   * elsewhere: 3/4 of RAM, leaving a quarter for the OS, the Python heap, decoded images
     and whatever else runs on the machine.

The host resolves the budget at start-up, before any model is loaded, so we never import mlx
here just to ask it (importing mlx costs seconds and pulls in Metal; a host that serves only
non-MLX models should never pay that). Physical memory comes from ``sysconf`` or
``sysctl hw.memsize``, with no psutil dependency.

All sizes in this package are GiB (2**30 bytes; MLX and mflux call them "GB"). Names ending in
``_gb`` here (``memory_limit_gb``, ``Budget.gb``, ``/v1/memory``'s fields) predate the naming
rule of :mod:`kiapi_core.units` and are kept for their users: they hold GiB too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..units import BYTES_PER_GIB

GIB = BYTES_PER_GIB

#: Share of physical memory used when no limit is configured (non-macOS).
DEFAULT_SHARE = 0.75
#: macOS: Metal recommends ~2/3 of RAM as GPU working set up to 32 GB, ~3/4 above.
DARWIN_SMALL_SHARE = 2 / 3
DARWIN_LARGE_SHARE = 0.75
DARWIN_LARGE_FROM_GB = 32.0


@dataclass(frozen=True)
class Budget:
    """The resolved budget and where it came from (shown in logs, ``/health`` and ``/v1/memory``)."""

    gb: float
    #: ``setting``, ``mlx-working-set`` or ``physical-share``.
    source: str
    #: Physical memory in GiB when known (after any cgroup cap).
    physical_gb: float | None = None
    #: The share of physical memory used (``physical-share`` only).
    share: float | None = None

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.source == "setting":
            text = f"memory budget {self.gb:.2f} GiB (KIAPI_MEMORY_LIMIT_GB)"
        elif self.source == "mlx-working-set":
            text = f"memory budget {self.gb:.2f} GiB (MLX recommended working set)"
        else:
            text = f"memory budget {self.gb:.2f} GiB ({(self.share or 0) * 100:.0f} % of physical memory)"
        if self.physical_gb is not None:
            text += f"; physical memory {self.physical_gb:.2f} GiB"
        if self.source == "setting" and self.physical_gb is not None and self.gb > self.physical_gb:
            text += " (the budget exceeds physical memory: the machine may swap)"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {"budget_gb": round(self.gb, 3), "budget_source": self.source,
                "physical_gb": None if self.physical_gb is None else round(self.physical_gb, 3)}


def resolve_budget(settings: Any, *, physical_bytes: int | None = None, platform: str | None = None) -> Budget:
    """The budget for ``settings`` (anything with ``memory_limit_gb``).

    ``physical_bytes`` and ``platform`` are for tests; by default they are detected.
    """
    platform = platform or sys.platform
    physical = physical_bytes if physical_bytes is not None else physical_memory_bytes()
    physical_gb = physical / GIB if physical else None
    limit = getattr(settings, "memory_limit_gb", None)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"memory_limit_gb must be positive, got {limit}")
        return Budget(gb=float(limit), source="setting", physical_gb=physical_gb)
    if platform == "darwin":
        working_set = _mlx_working_set_bytes()
        if working_set:
            return Budget(gb=working_set / GIB, source="mlx-working-set", physical_gb=physical_gb)
    if physical_gb is None:
        # Nothing to go on: assume a small machine rather than an unbounded budget.
        physical_gb = 8.0
    if platform == "darwin":
        share = DARWIN_LARGE_SHARE if physical_gb > DARWIN_LARGE_FROM_GB else DARWIN_SMALL_SHARE
    else:
        share = DEFAULT_SHARE
    return Budget(gb=physical_gb * share, source="physical-share", physical_gb=physical_gb, share=share)


def physical_memory_bytes() -> int | None:
    """Installed RAM in bytes, capped by a cgroup v2/v1 memory limit; ``None`` when unknown."""
    total: int | None = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    if not total and sys.platform == "darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                 timeout=5, check=True).stdout
            total = int(out.strip())
        except (OSError, ValueError, subprocess.SubprocessError):
            total = None
    cap = _cgroup_limit_bytes()
    if cap and (not total or cap < total):
        return cap
    return total or None


def _cgroup_limit_bytes() -> int | None:
    """A container's memory limit (cgroup v2 ``memory.max`` or v1 ``limit_in_bytes``)."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:  # v1 reports "no limit" as a huge number
            return int(raw)
    return None


def _mlx_working_set_bytes() -> int | None:
    """MLX's recommended working set, only when mlx is already imported (never import it here)."""
    mx = sys.modules.get("mlx.core")
    if mx is None:
        return None
    try:
        info = mx.device_info()
    except Exception:  # an informational probe must never break start-up
        return None
    value = info.get("max_recommended_working_set_size") if isinstance(info, dict) else None
    return int(value) if value else None
