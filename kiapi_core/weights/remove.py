"""Removing model weights from the Hugging Face cache, file by file.

huggingface_hub can only delete whole revisions, but variants share revisions (SeedVR2's 3b and
7b live in one repo and share ``ema_vae_fp16.safetensors``), and the earlier kiapi deleted both
when asked for one. Here a removal takes exactly the files a variant's patterns select at its
pinned revision, keeps those another variant still on disk needs, and deletes a blob only when
no remaining snapshot link points at it. Configured local directories are never touched: they are
the operator's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from ..registry import Capability, Model
from .layout import file_size, local_dir, matches, repo_cache_dir, selected_files, setting_env, snapshot_dir


class Removal(msgspec.Struct, kw_only=True):
    """What deactivating one model deletes, keeps and frees."""

    family: str
    model: str
    #: Snapshot entries (paths) that go.
    links: list[str] = msgspec.field(default_factory=list)
    #: Blob (or plain) files that go, with their sizes.
    blobs: dict[str, int] = msgspec.field(default_factory=dict)
    #: Files left in place and the variants that still need them.
    kept: dict[str, list[str]] = msgspec.field(default_factory=dict)
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(self.blobs.values())


def plan_removal(capabilities: Iterable[Capability], selected: Sequence[tuple[Capability, Model]],
                 plugin_settings: Callable[[str], Any]) -> list[Removal]:
    """What :func:`remove` would do for ``selected``; reads the disk, changes nothing."""
    caps = list(capabilities)
    chosen = {(c.name, m.name) for c, m in selected}
    others = [(c, m) for c in caps for m in c.models if (c.name, m.name) not in chosen]
    claimed: set[str] = set()  # blobs already planned by an earlier removal in this run
    removals: list[Removal] = []
    for capability, model in selected:
        removal = Removal(family=capability.name, model=model.name)
        removals.append(removal)
        settings = plugin_settings(capability.name)
        for weights in model.weights:
            local = local_dir(weights, settings)
            if local is not None:
                removal.notes.append(
                    f"{weights.repo}: kept: the files are in {local} "
                    f"({setting_env(capability.name, weights.local_dir_setting or '')}), a directory you "
                    "manage; delete it yourself if you no longer need it")
                continue
            snapshot = snapshot_dir(weights)
            if snapshot is None:
                removal.notes.append(f"{weights.repo}: nothing in the Hugging Face cache")
                continue
            targets = selected_files(snapshot, weights.patterns)
            # Another variant still needs a shared file when it has files of its own here too
            # (7b's DiT next to the shared VAE); one with nothing else on disk keeps nothing.
            needers = [(f"{c.name}:{m.name}", w.patterns) for c, m in others for w in m.weights
                       if w.repo == weights.repo and w.revision == weights.revision
                       and local_dir(w, plugin_settings(c.name)) is None
                       and any(rel not in targets for rel in selected_files(snapshot, w.patterns))]
            linked = _links_by_blob(repo_cache_dir(weights.repo))
            going = set()
            for rel, path in sorted(targets.items()):
                users = [name for name, patterns in needers if matches(rel, patterns)]
                if users:
                    removal.kept[str(path)] = users
                    continue
                going.add(str(path))
                removal.links.append(str(path))
            for link in removal.links:
                path = Path(link)
                if not path.is_symlink():  # a plain file (no-symlink caches)
                    removal.blobs[link] = file_size(path) or 0
                    continue
                blob = os.path.realpath(path)
                if blob in claimed or not os.path.exists(blob):
                    continue
                if linked.get(blob, set()) <= going | _claimed_links(removals):
                    removal.blobs[blob] = file_size(Path(blob)) or 0
                    claimed.add(blob)
    return removals


def _claimed_links(removals: Sequence[Removal]) -> set[str]:
    return {link for r in removals for link in r.links}


def _links_by_blob(repo_dir: Path) -> dict[str, set[str]]:
    """Every snapshot link of the repo (all revisions), grouped by the blob it points at."""
    links: dict[str, set[str]] = {}
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return links
    for directory, _dirs, names in os.walk(snapshots):
        for name in names:
            path = Path(directory) / name
            if path.is_symlink():
                links.setdefault(os.path.realpath(path), set()).add(str(path))
    return links


def remove(removals: Sequence[Removal]) -> int:
    """Delete what :func:`plan_removal` planned; tidy empty snapshot dirs; returns bytes freed."""
    freed = 0
    touched: set[Path] = set()
    for removal in removals:
        for link in removal.links:
            path = Path(link)
            if path.is_symlink() or path.exists():
                path.unlink()
            touched.add(_repo_dir_of(path))
        for blob, size in removal.blobs.items():
            if os.path.lexists(blob):
                os.unlink(blob)
                freed += size
    for repo_dir in touched:
        _tidy(repo_dir)
    return freed


def _repo_dir_of(path: Path) -> Path:
    for parent in path.parents:
        if parent.name.startswith("models--"):
            return parent
    return path.parent


def _tidy(repo_dir: Path) -> None:
    """Drop empty directories and snapshots, refs to removed snapshots, and the repo when empty.

    When no snapshot is left, leftover blobs (``.incomplete`` files of interrupted downloads)
    belong to nothing and go too.
    """
    snapshots = repo_dir / "snapshots"
    if snapshots.is_dir():
        for directory, _dirs, _names in sorted(os.walk(snapshots), key=lambda t: -len(t[0])):
            path = Path(directory)
            if path != snapshots and not any(path.iterdir()):
                path.rmdir()
    remaining = {p.name for p in snapshots.iterdir()} if snapshots.is_dir() else set()
    refs = repo_dir / "refs"
    if refs.is_dir():
        for ref in list(refs.rglob("*")):
            if ref.is_file() and ref.read_text().strip() not in remaining:
                ref.unlink()
    if not remaining:
        shutil.rmtree(repo_dir, ignore_errors=True)
