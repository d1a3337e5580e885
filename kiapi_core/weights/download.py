"""Fetching model weights: a plan first (what, from where, how much), then the downloads.

The plan is made offline from :func:`kiapi_core.weights.presence.status` (declared sizes minus what is
already on disk), so ``kiapi activate --dry-run`` answers without network. When the Hub is
reachable, :func:`refine` asks it (``snapshot_download(dry_run=True)``) for the exact bytes still
to fetch; that call is also where gated or missing repositories show up, before anything is
written. Downloads go through ``huggingface_hub.snapshot_download`` restricted to each
variant's patterns, which resumes interrupted files and skips complete ones.

huggingface_hub is imported only inside the functions that talk to the Hub.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..registry import Capability, Model
from ..units import BYTES_PER_GB, human_bytes
from .layout import hf_cache_dir
from .presence import WeightStatus, status

#: Free space kept beyond the download itself (huggingface_hub writes ``.incomplete`` files
#: next to the blobs, and a full disk breaks more than kiapi).
DISK_HEADROOM_BYTES = 1 * BYTES_PER_GB
HF_URL = "https://huggingface.co"


class ActivationError(Exception):
    """Activation cannot go on; the message says why and what to do."""


class Download(msgspec.Struct, kw_only=True):
    """One ``snapshot_download`` call: a repo at a revision, the union of the needed patterns."""

    repo: str
    revision: str | None
    patterns: list[str]
    destination: Literal["hf-cache", "local"]
    #: The Hugging Face cache directory, or the configured local directory.
    path: str
    models: list[str]
    #: Declared sizes minus what is already on disk (an upper bound: shared files count twice).
    estimate_bytes: int = 0
    #: From the Hub's dry run, when it could be asked.
    exact_bytes: int | None = None
    files: int | None = None

    @property
    def bytes(self) -> int:
        return self.exact_bytes if self.exact_bytes is not None else self.estimate_bytes


class Plan(msgspec.Struct, kw_only=True):
    """What ``kiapi activate`` will do; also printed by ``--dry-run`` and ``--json``."""

    present: list[WeightStatus] = msgspec.field(default_factory=list)
    todo: list[WeightStatus] = msgspec.field(default_factory=list)
    downloads: list[Download] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)

    @property
    def download_bytes(self) -> int:
        return sum(d.bytes for d in self.downloads)

    @property
    def exact(self) -> bool:
        return all(d.exact_bytes is not None for d in self.downloads)


def make_plan(items: Sequence[tuple[Capability, Model]], plugin_settings: Callable[[str], Any]) -> Plan:
    """Split ``items`` into present models (reported, not fetched) and downloads, offline."""
    plan = Plan()
    merged: dict[tuple[str, str | None, str, str], Download] = {}
    for capability, model in items:
        found = status(capability, model, plugin_settings(capability.name))
        if found.state == "present":
            plan.present.append(found)
            continue
        plan.todo.append(found)
        for part in found.parts:
            if part.state == "present":
                continue
            path = part.root if part.source == "local" else str(hf_cache_dir())
            key = (part.repo, part.revision, part.source, path)
            download = merged.get(key)
            if download is None:
                download = merged[key] = Download(repo=part.repo, revision=part.revision, patterns=[],
                                                  destination=part.source, path=path, models=[])
                plan.downloads.append(download)
            download.patterns.extend(p for p in part.patterns if p not in download.patterns)
            download.models.append(f"{capability.name}:{model.name}")
            download.estimate_bytes += max(0, part.expected_bytes - part.size_bytes)
    return plan


def _target(download: Download) -> dict[str, Any]:
    if download.destination == "local":
        return {"local_dir": download.path}
    return {"cache_dir": download.path}


def refine(item: Download) -> None:
    """Replace ``item``'s estimate by the Hub's exact numbers (files not yet cached, their bytes).

    Raises whatever huggingface_hub raises (gated, not found, offline): :func:`explain` words it.
    """
    import huggingface_hub

    infos = huggingface_hub.snapshot_download(
        item.repo, revision=item.revision, allow_patterns=item.patterns or None, dry_run=True,
        **_target(item))
    pending = [info for info in infos if getattr(info, "will_download", True)]
    item.files = len(pending)
    item.exact_bytes = sum(int(getattr(info, "file_size", 0) or 0) for info in pending)


def existing_ancestor(path: Path) -> Path:
    """The nearest existing directory at or above ``path`` (where the download will land)."""
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(plan: Plan, headroom: int = DISK_HEADROOM_BYTES) -> None:
    """Refuse before downloading when a target file system lacks space (numbers in the message)."""
    needs: dict[int, tuple[Path, int]] = {}
    for download in plan.downloads:
        where = existing_ancestor(Path(download.path))
        device = where.stat().st_dev
        previous = needs.get(device, (where, 0))
        needs[device] = (previous[0], previous[1] + download.bytes)
    for where, needed in needs.values():
        if needed == 0:
            continue
        free = shutil.disk_usage(where).free
        if needed + headroom > free:
            raise ActivationError(
                f"not enough disk space on {where}: the download needs {human_bytes(needed)}"
                f"{'' if plan.exact else ' (estimated)'} plus {human_bytes(headroom)} headroom, "
                f"but only {human_bytes(free)} is free. Free some space, or put the weights on a "
                "larger disk (HF_HUB_CACHE=/path/to/cache, or the plugin's local directory setting).")


def download(item: Download) -> str:
    """Fetch one download with huggingface_hub's progress bars; resumable and idempotent."""
    import huggingface_hub

    return huggingface_hub.snapshot_download(
        item.repo, revision=item.revision, allow_patterns=item.patterns or None, **_target(item))


def explain(exc: BaseException, item: Download) -> str | None:
    """A clear sentence for a failed Hub call, or ``None`` when ``exc`` is not a known failure."""
    import httpx
    from huggingface_hub import errors

    repo, url = item.repo, f"{HF_URL}/{item.repo}"
    login = "log in with `hf auth login` (or export HF_TOKEN=hf_...)"
    if isinstance(exc, errors.GatedRepoError):
        return (f"{repo} is a gated repository: open {url} while logged in to Hugging Face and accept "
                f"its terms, then {login}, and run this command again.")
    if isinstance(exc, errors.RevisionNotFoundError):
        return (f"{repo} has no revision {item.revision}: the plugin pins a revision the Hub does not "
                "serve (any more); upgrade the plugin.")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return (f"repository {repo} was not found on the Hub (or it is private and you are not "
                f"logged in: {login}). Check {url}.")
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return ("HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (`unset HF_HUB_OFFLINE`) "
                "and run this command again, or copy the weights into a local directory and set the "
                "plugin's path setting.")
    if isinstance(exc, errors.HfHubHTTPError):
        code = getattr(getattr(exc, "response", None), "status_code", None)
        if code in (401, 403):
            return f"the Hub refused access to {repo} (HTTP {code}): {login}, and check {url}."
        return f"the Hub answered an error for {repo}{f' (HTTP {code})' if code else ''}: {exc}"
    if isinstance(exc, (httpx.TransportError, errors.LocalEntryNotFoundError, ConnectionError, TimeoutError)):
        return (f"cannot reach the Hugging Face Hub ({type(exc).__name__}: {exc}). Check the network "
                "(and HTTPS_PROXY / HF_ENDPOINT if you use them); nothing was deleted, run the same "
                "command again to resume.")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return ("the disk filled up during the download; free space and run the same command again "
                "to resume.")
    return None

