"""Whether MLX can run models on this machine, told without importing it."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any


def mlx_note(platform: str = sys.platform, machine: str | None = None,
             find_spec: Callable[[str], Any] = importlib.util.find_spec) -> str | None:
    """Why MLX cannot run models here, or ``None`` when it can (as far as can be told cheaply).

    Never imports mlx (that alone can take seconds or crash without a usable backend): looks at
    the installed distributions and, on Linux, whether an NVIDIA device is visible.
    """
    import platform as _platform

    machine = machine or _platform.machine()
    if platform == "darwin" and machine != "arm64":
        return "MLX needs Apple silicon (arm64); this Mac cannot run the models."
    try:
        if find_spec("mlx") is None or find_spec("mlx.core") is None:
            return "MLX is not installed in this environment: models cannot run (install the plugins with uv or pip)."
    except (ImportError, ValueError):
        return "MLX is not importable in this environment: models cannot run."
    if platform != "linux":
        return None
    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    if "mlx-cpu" in names:
        return ("MLX runs on its CPU backend here (Linux): demo models work, real weights are "
                "very slow; production use is on Apple silicon.")
    if any(n.startswith("mlx-cuda") for n in names):
        if not Path("/dev/nvidiactl").exists():
            return ("MLX's CUDA backend is installed but no NVIDIA GPU is visible: models cannot run; "
                    "install mlx[cpu] instead (see docs/install.md).")
        return None
    return "MLX is installed without a Linux backend (mlx[cpu] or mlx[cuda]): models cannot run."
