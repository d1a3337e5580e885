"""Where a model's weights are and whether they are all there, offline and fast.

A model declares :class:`~kiapi_core.registry.WeightFiles` (a Hugging Face repo, a pinned
revision, the file patterns it needs). They are looked for in a local directory named by a
plugin setting, else in the Hugging Face cache, at the pinned revision only (that is the one
mflux loads). Nothing here touches the network or imports huggingface_hub or mlx: the server
calls :func:`status` on every request for a model with weights, and ``kiapi status`` must answer
on a machine with no network at all.

The cache layout is huggingface_hub's: ``<cache>/models--org--name/snapshots/<rev>/<path>`` are
symlinks into ``<cache>/models--org--name/blobs/``; sizes follow the links.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import msgspec

from .registry import Capability, Model, WeightFiles

State = Literal["present", "partial", "missing"]
GB = 1_000_000_000


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
    expected_gb: float = 0.0
    missing: list[str] = msgspec.field(default_factory=list)
    activate: str = ""
    aliases: list[str] = msgspec.field(default_factory=list)
    default: bool = False
    expected_bytes: int = 0
    parts: list[PartStatus] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)


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


# -- status ----------------------------------------------------------------------------------
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
        expected_bytes=int(weights.size_gb * GB),
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
        default=model.default, expected_gb=round(sum(w.size_gb for w in model.weights), 3),
        expected_bytes=sum(p.expected_bytes for p in parts), parts=parts,
    )
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


# -- selection -------------------------------------------------------------------------------
class SelectionError(ValueError):
    """A selector names no installed capability or model; the message lists the valid ones."""


def valid_selectors(capabilities: Iterable[Capability]) -> list[str]:
    """Every accepted ``family`` and ``family:model`` selector, for error and usage messages."""
    out: list[str] = []
    for capability in capabilities:
        out.append(capability.name)
        out.extend(f"{capability.name}:{m.name}" for m in capability.models)
    return out


def select(capabilities: Iterable[Capability], selectors: Sequence[str], *,
           with_weights: bool = False) -> list[tuple[Capability, Model]]:
    """Resolve ``family`` / ``family:model`` selectors (aliases, any case) in declaration order.

    ``with_weights`` leaves out models that declare no weight files (nothing to fetch).
    """
    caps = list(capabilities)
    by_name = {c.name: c for c in caps}
    chosen: list[tuple[Capability, Model]] = []
    for selector in selectors:
        family, _, name = selector.partition(":")
        capability = by_name.get(family.strip().lower())
        if capability is None:
            raise SelectionError(f"no capability {family!r}; valid selectors: "
                                 f"{', '.join(valid_selectors(caps)) or '(no plugins installed)'}")
        if not name:
            models = list(capability.models)
        else:
            wanted = name.strip().lower()
            models = [m for m in capability.models if wanted in (m.name.lower(), *(a.lower() for a in m.aliases))]
            if not models:
                raise SelectionError(f"no {family} model {name!r}; valid selectors: "
                                     f"{', '.join(valid_selectors([capability]))}")
        for model in models:
            if (with_weights and not model.weights) or any(m is model for _, m in chosen):
                continue
            chosen.append((capability, model))
    return chosen


# -- runtime ---------------------------------------------------------------------------------
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


def human_bytes(size: float) -> str:
    """Decimal units, like the GB figures plugins declare."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


#: Exception class names that mean "the weights are not there" when a loader reaches for them:
#: a missing local file, Hugging Face's offline and not-found errors, no network, or mflux
#: finding files that do not fit the model.
_MISSING_WEIGHTS_ERRORS = frozenset({"FileNotFoundError", "OfflineModeIsEnabled", "LocalEntryNotFoundError",
                                     "RepositoryNotFoundError", "ConnectError", "ModelConfigError"})


def is_missing_weights_error(exc: BaseException) -> bool:
    """Whether a loader's exception means missing weights (answer 503 with ``kiapi activate``)
    rather than a bug (500). Matched by class name so no hub library needs importing."""
    return bool({cls.__name__ for cls in type(exc).__mro__} & _MISSING_WEIGHTS_ERRORS)


async def readiness_of_all(host: Any) -> dict[str, dict[str, bool]]:
    """:func:`model_readiness` for every capability, with at most one thread hop in all."""
    import asyncio

    def check() -> dict[str, dict[str, bool]]:
        return {c.name: {m.name: host.settings.demo or not m.weights
                         or status(c, m, host.plugin_settings(c.name)).state == "present"
                         for m in c.models} for c in host.registry}

    if host.settings.demo or not any(m.weights for c in host.registry for m in c.models):
        return check()
    return await asyncio.to_thread(check)


async def model_readiness(host: Any, capability: Capability) -> dict[str, bool]:
    """Model name → whether it can run now: demo models and weightless ones always can; others
    when their weights are present. Checked off the event loop (it reads the disk)."""
    import asyncio

    settings = host.plugin_settings(capability.name)

    def check() -> dict[str, bool]:
        return {m.name: host.settings.demo or not m.weights or status(capability, m, settings).state == "present"
                for m in capability.models}

    if host.settings.demo or not any(m.weights for m in capability.models):
        return check()  # nothing to read from disk: no thread hop (/health runs this per capability)
    return await asyncio.to_thread(check)
