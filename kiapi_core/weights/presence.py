"""Whether a model's weights are all there: present, partial or missing, offline and fast.

A model declares :class:`~kiapi_core.registry.WeightFiles` (a Hugging Face repo, a pinned
revision, the file patterns it needs); :mod:`.layout` says where they are looked for. The
server checks presence before admitting a request for a model with weights, ``/health`` and the
model lists report it, and ``kiapi status`` must answer on a machine with no network at all:
nothing here touches the network or imports huggingface_hub or mlx.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..errors import WeightsMissing
from ..registry import Capability, Model, WeightFiles
from ..units import BYTES_PER_GB, BYTES_PER_GIB
from .layout import (
    expected_snapshot,
    file_size,
    local_dir,
    matches,
    repo_cache_dir,
    selected_files,
    setting_env,
    snapshot_dir,
)

State = Literal["present", "partial", "missing"]


class PartStatus(msgspec.Struct, kw_only=True):
    """One :class:`WeightFiles` selection of a model: where it is looked for and what is there."""

    repo: str
    revision: str | None
    patterns: list[str]
    state: State
    source: Literal["local", "hf-cache"]
    #: The directory the files are (or would be) in: the snapshot or the configured local dir.
    root: str
    #: ``KIAPI_<FAMILY>_<SETTING>`` when a local directory is configured, else ``None``.
    setting: str | None = None
    size_bytes: int = 0
    #: The declared size (``WeightFiles.size_gib``) in bytes.
    expected_bytes: int = 0
    files: int = 0
    missing: list[str] = msgspec.field(default_factory=list)


class WeightStatus(msgspec.Struct, kw_only=True):
    """A model's weights: present, partial or missing, with sizes, places and what is missing."""

    family: str
    model: str
    state: State
    location: str | None
    source: Literal["local", "hf-cache", "none"]
    size_bytes: int = 0
    #: The declared size in decimal GB (10**9 bytes), as the Hub and disk tools show sizes.
    expected_gb: float = 0.0
    missing: list[str] = msgspec.field(default_factory=list)
    activate: str = ""
    aliases: list[str] = msgspec.field(default_factory=list)
    default: bool = False
    expected_bytes: int = 0
    parts: list[PartStatus] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)


def _missing_shards(root: Path, selected: dict[str, Path]) -> list[str]:
    """Shards named by a selected ``*.safetensors.index.json`` that are not on disk.

    An interrupted download of a sharded transformer leaves some shards out; only the index
    knows the complete list without asking the Hub.
    """
    missing: list[str] = []
    for rel, path in selected.items():
        if not rel.endswith(".index.json"):
            continue
        try:
            weight_map = json.loads(path.read_text()).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            continue
        folder = rel.rsplit("/", 1)[0] + "/" if "/" in rel else ""
        for shard in sorted(set(weight_map.values()) if isinstance(weight_map, dict) else ()):
            if folder + shard not in selected and file_size(root / folder / shard) is None:
                missing.append(folder + shard)
    return missing


def _local_patterns(root: Path, weights: WeightFiles) -> tuple[str, ...]:
    """The pattern set a local directory satisfies: the repo's own, else the first complete
    alternative (an mflux-saved layout), else the repo's (to name what is missing)."""
    for patterns in (weights.patterns, *weights.local_alternatives):
        selected = selected_files(root, patterns)
        if all(any(matches(rel, (p,)) for rel in selected) for p in patterns or ("*",)):
            return patterns
    return weights.patterns


def part_status(family: str, weights: WeightFiles, plugin_settings: Any) -> PartStatus:
    """The state of one WeightFiles selection (see :class:`PartStatus`)."""
    local = local_dir(weights, plugin_settings)
    root = local if local is not None else snapshot_dir(weights)
    part = PartStatus(
        repo=weights.repo, revision=weights.revision, patterns=list(weights.patterns),
        state="missing", source="local" if local is not None else "hf-cache",
        root=str(root if root is not None else expected_snapshot(weights)),
        setting=setting_env(family, weights.local_dir_setting) if local is not None and weights.local_dir_setting else None,
        expected_bytes=round(weights.size_gib * BYTES_PER_GIB),
    )
    if root is None or not root.is_dir():
        part.missing.append(f"{weights.repo}: not downloaded" if local is None
                            else f"{weights.repo}: {root} ({part.setting}) is not a directory")
        return part
    patterns = _local_patterns(root, weights) if local is not None else weights.patterns
    part.patterns = list(patterns)
    selected = selected_files(root, patterns)
    for pattern in patterns or ("*",):
        if not any(matches(rel, (pattern,)) for rel in selected):
            part.missing.append(f"{weights.repo}: {pattern}")
    for rel, path in sorted(selected.items()):
        size = file_size(path)
        if size is None:
            part.missing.append(f"{weights.repo}: {rel} (broken link)")
            continue
        part.size_bytes += size
        part.files += 1
    part.missing.extend(f"{weights.repo}: {rel}" for rel in _missing_shards(root, selected))
    part.state = "present" if not part.missing else ("partial" if part.files else "missing")
    return part


def status(capability: Capability, model: Model, plugin_settings: Any) -> WeightStatus:
    """Present, partial or missing, with size on disk and what is missing."""
    parts = [part_status(capability.name, w, plugin_settings) for w in model.weights]
    result = WeightStatus(
        family=capability.name, model=model.name, state="present", location=None, source="none",
        activate=f"kiapi activate {capability.name}:{model.name}", aliases=list(model.aliases),
        default=model.default, expected_bytes=sum(p.expected_bytes for p in parts), parts=parts,
    )
    result.expected_gb = round(result.expected_bytes / BYTES_PER_GB, 3)
    for part in parts:
        result.size_bytes += part.size_bytes
        result.missing.extend(part.missing)
        if result.location is None and (part.state != "missing" or part.source == "local"):
            result.location, result.source = part.root, part.source
    states = {p.state for p in parts}
    if states and states != {"present"}:
        result.state = "missing" if states == {"missing"} else "partial"
    if result.state == "missing" and result.location is None and parts:
        result.location, result.source = parts[0].root, "none"
        result.notes.extend(note for note in map(_other_revisions, model.weights) if note)
    return result


def _other_revisions(weights: WeightFiles) -> str:
    """A note when the cache holds other revisions of the repo than the pinned one."""
    snapshots = repo_cache_dir(weights.repo) / "snapshots"
    if not weights.revision or not snapshots.is_dir():
        return ""
    others = sorted(p.name[:8] for p in snapshots.iterdir() if p.name != weights.revision)
    if not others:
        return ""
    return (f"the cache holds {weights.repo} at revision {', '.join(others)}, but kiapi loads the "
            f"pinned revision {weights.revision[:8]}")


def missing_message(result: WeightStatus) -> str:
    """The sentence a 503 carries: what is missing and the command that fetches it."""
    return (f"{result.family} model {result.model!r} is not activated: "
            f"{'; '.join(result.missing)}. Run `{result.activate}` to download it"
            " (or point the plugin's local directory setting at a copy).")


#: Exception class names that mean "the weights are not there" when a loader reaches for them:
#: a missing local file, Hugging Face's offline and not-found errors, no network, or mflux
#: finding files that do not fit the model.
_MISSING_WEIGHTS_ERRORS = frozenset({"FileNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                                     "RepositoryNotFoundError", "ConnectError", "ModelConfigError"})


def is_missing_weights_error(exc: BaseException) -> bool:
    """Whether a loader's exception means missing weights (answer 503 with ``kiapi activate``)
    rather than a bug (500). Matched by class name so no hub library needs importing."""
    return bool({cls.__name__ for cls in type(exc).__mro__} & _MISSING_WEIGHTS_ERRORS)


# -- the one weights-present check -------------------------------------------------------------
def checks_disk(model: Model, demo: bool) -> bool:
    """Whether ``model`` can run only once its weight files are on disk (demo models and
    weightless ones always can: nothing to read)."""
    return not demo and bool(model.weights)


def is_ready(capability: Capability, model: Model, plugin_settings: Any, *, demo: bool) -> bool:
    """Whether ``model`` can run now. Reads the disk: call it off the event loop."""
    return not checks_disk(model, demo) or status(capability, model, plugin_settings).state == "present"


def require_present(capability: Capability, model: Model, plugin_settings: Any, *, demo: bool) -> None:
    """Raise :class:`~kiapi_core.errors.WeightsMissing` (503 naming ``kiapi activate``) unless
    ``model`` can run now: the check before admitting a request and before a warm-up."""
    if not checks_disk(model, demo):
        return
    found = status(capability, model, plugin_settings)
    if found.state != "present":
        raise WeightsMissing(missing_message(found), activate=found.activate)


async def readiness_of_all(host: Any) -> dict[str, dict[str, bool]]:
    """:func:`model_readiness` for every capability, with at most one thread hop in all."""

    def check() -> dict[str, dict[str, bool]]:
        return {c.name: _readiness(host, c) for c in host.registry}

    if not any(checks_disk(m, host.settings.demo) for c in host.registry for m in c.models):
        return check()  # nothing to read from disk: no thread hop
    return await asyncio.to_thread(check)


async def model_readiness(host: Any, capability: Capability) -> dict[str, bool]:
    """Model name → whether it can run now (:func:`is_ready`), checked off the event loop."""
    if not any(checks_disk(m, host.settings.demo) for m in capability.models):
        return _readiness(host, capability)  # nothing to read from disk: no thread hop
    return await asyncio.to_thread(_readiness, host, capability)


def _readiness(host: Any, capability: Capability) -> dict[str, bool]:
    settings = host.plugin_settings(capability.name)
    return {m.name: is_ready(capability, m, settings, demo=host.settings.demo) for m in capability.models}
