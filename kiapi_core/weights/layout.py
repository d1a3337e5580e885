"""Where a model's weight files are looked for, and which files a declaration selects.

Two places: a local directory named by a plugin setting (``KIAPI_ERNIE_TURBO_PATH``), else the
Hugging Face cache at the pinned revision only (that is the one mflux loads). The cache layout
is huggingface_hub's: ``<cache>/models--org--name/snapshots/<rev>/<path>`` are symlinks into
``<cache>/models--org--name/blobs/``; sizes follow the links. Nothing here imports
huggingface_hub or touches the network.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..registry import WeightFiles


# -- places ----------------------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (without importing it):
    ``HF_HUB_CACHE``, else the legacy ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME``/hub."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return Path(home).expanduser() / "hub"


def repo_cache_dir(repo: str, cache: Path | None = None) -> Path:
    """``<cache>/models--org--name``: where huggingface_hub keeps every revision of ``repo``."""
    return (cache or hf_cache_dir()) / ("models--" + repo.replace("/", "--"))


def snapshot_dir(weights: WeightFiles, cache: Path | None = None) -> Path | None:
    """The cached snapshot directory of ``weights`` (its pinned revision), if any."""
    repo_dir = repo_cache_dir(weights.repo, cache)
    snapshots = repo_dir / "snapshots"
    if weights.revision:
        candidate = snapshots / weights.revision
        return candidate if candidate.is_dir() else None
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidate = snapshots / ref.read_text().strip()
        if candidate.is_dir():
            return candidate
    return None


def expected_snapshot(weights: WeightFiles, cache: Path | None = None) -> Path:
    """Where the snapshot of ``weights`` is or will be (for messages when it is absent)."""
    found = snapshot_dir(weights, cache)
    if found is not None:
        return found
    return repo_cache_dir(weights.repo, cache) / "snapshots" / (weights.revision or "<main>")


def local_dir(weights: WeightFiles, plugin_settings: Any) -> Path | None:
    """The configured local directory for ``weights`` (``turbo_path`` ...), if any."""
    if weights.local_dir_setting and plugin_settings is not None:
        value = getattr(plugin_settings, weights.local_dir_setting, None)
        if value:
            return Path(value).expanduser()
    return None


def setting_env(family: str, setting: str) -> str:
    """The environment variable of a plugin setting (``KIAPI_ERNIE_TURBO_PATH``)."""
    return f"KIAPI_{family.upper().replace('-', '_')}_{setting.upper()}"


# -- files -----------------------------------------------------------------------------------
def matches(relative: str, patterns: Sequence[str]) -> bool:
    """huggingface_hub's ``allow_patterns`` semantics: fnmatch, ``dir/`` meaning ``dir/*``."""
    if not patterns:
        return True
    return any(fnmatch.fnmatch(relative, p + "*" if p.endswith("/") else p) for p in patterns)


def listed_files(root: Path) -> dict[str, Path]:
    """Every file (or file link, broken or not) under ``root`` by POSIX relative path.

    ``.cache`` (huggingface_hub's bookkeeping inside a ``local_dir`` download) is skipped.
    """
    found: dict[str, Path] = {}
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".cache" or Path(directory) != root]
        for name in names:
            path = Path(directory) / name
            found[path.relative_to(root).as_posix()] = path
    return found


def selected_files(root: Path, patterns: Sequence[str]) -> dict[str, Path]:
    """The files under ``root`` that ``patterns`` select."""
    return {rel: path for rel, path in listed_files(root).items() if matches(rel, patterns)}


def file_size(path: Path) -> int | None:
    """Size of a file, following the cache's blob symlink; ``None`` for a broken link."""
    try:
        return path.stat().st_size
    except OSError:
        return None
