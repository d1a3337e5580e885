"""Where a model's weights are and whether they are all there, offline and fast.

A model declares :class:`~kiapi_core.registry.WeightFiles` (a Hugging Face repo, a pinned
revision, the file patterns it needs). They are looked for in a local directory named by a
plugin setting, else in the Hugging Face cache. Nothing here touches the network.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from .registry import Capability, Model, WeightFiles

State = Literal["present", "partial", "missing"]


class WeightStatus(msgspec.Struct, kw_only=True):
    family: str
    model: str
    state: State
    location: str | None
    source: Literal["local", "hf-cache", "none"]
    size_bytes: int = 0
    expected_gb: float = 0.0
    missing: list[str] = msgspec.field(default_factory=list)
    activate: str = ""


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, as huggingface_hub resolves it (without importing it)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or str(Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface")
    return Path(home).expanduser() / "hub"


def snapshot_dir(weights: WeightFiles) -> Path | None:
    """The cached snapshot directory of ``weights`` (its pinned revision), if any."""
    repo_dir = hf_cache_dir() / ("models--" + weights.repo.replace("/", "--"))
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


def local_dir(weights: WeightFiles, plugin_settings: Any) -> Path | None:
    if weights.local_dir_setting and plugin_settings is not None:
        value = getattr(plugin_settings, weights.local_dir_setting, None)
        if value:
            return Path(value).expanduser()
    return None


def status(capability: Capability, model: Model, plugin_settings: Any) -> WeightStatus:
    """Present, partial or missing, with size on disk and what is missing."""
    command = f"kiapi activate {capability.name}:{model.name}"
    result = WeightStatus(family=capability.name, model=model.name, state="present", location=None,
                          source="none", activate=command,
                          expected_gb=sum(w.size_gb for w in model.weights))
    found_any = False
    for weights in model.weights:
        local = local_dir(weights, plugin_settings)
        root = local if local is not None else snapshot_dir(weights)
        result.source = "local" if local is not None else ("hf-cache" if root else result.source)
        if root is None or not root.is_dir():
            result.missing.append(f"{weights.repo}: not downloaded")
            continue
        result.location = str(root)
        files = [p for p in root.rglob("*") if p.is_file() or p.is_symlink()]
        relative = [p.relative_to(root).as_posix() for p in files]
        for pattern in weights.patterns or ("*",):
            matched = [p for p, rel in zip(files, relative) if fnmatch.fnmatch(rel, pattern)]
            if not matched:
                result.missing.append(f"{weights.repo}: {pattern}")
            found_any = found_any or bool(matched)
            for path in matched:
                try:
                    result.size_bytes += path.stat().st_size  # follows the cache's blob symlinks
                except OSError:
                    result.missing.append(f"{weights.repo}: {path.name} (broken link)")
    if result.missing:
        result.state = "partial" if found_any else "missing"
    return result


def missing_message(result: WeightStatus) -> str:
    return (f"{result.family} model {result.model!r} is not activated: "
            f"{'; '.join(result.missing)}. Run `{result.activate}` to download it"
            " (or point the plugin's local directory setting at a copy).")
