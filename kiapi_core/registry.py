"""What plugins declare, and the registry that resolves it.

A plugin describes a capability with three plain declarations:

* :class:`Capability`: a family (``ernie``) in a domain (``image``) with a Markdown guide,
  its :class:`Model` variants and its :class:`Operation` endpoints;
* :class:`Model`: one variant with aliases, a default flag, features, memory needs, the weight
  files it needs and a lazy ``"module:function"`` loader;
* :class:`Operation`: one ``POST /v1/{domain}/{family}/{name}`` endpoint with its request and
  result Structs, the handler that runs on the model thread and the hooks that validate a
  request before it is queued.

The :class:`Registry` holds the declarations of every loaded plugin, refuses clashes and
resolves model names. It never imports a plugin's heavy code.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec
from msgspec.structs import force_setattr

from .errors import StartupError, UnknownModel
from .units import gib_from_gb

InputKind = Literal["image", "file"]

#: Capability, domain and operation names are URL path segments: lower-case ASCII letters and
#: digits, ``-`` and ``_`` inside, at most 64 characters.
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,62}[a-z0-9])?")
#: First path segments under ``/v1/`` the core uses itself; no capability domain may take them.
RESERVED_DOMAINS = frozenset({"files", "jobs", "memory", "models", "webhooks", "metrics", "admin", "plugins"})
#: Path segments under a capability's prefix the core serves itself.
RESERVED_OPERATIONS = frozenset({"models", "openapi.json", "docs", "redoc"})
#: Model names (aliases may also hold ``/``, as Hugging Face repo ids do): printable, no spaces, no ``/`` or ``:`` (``kiapi activate ernie:turbo``).
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class KiapiDeprecationWarning(DeprecationWarning):
    """A plugin uses a declaration name or shape that a later kiapi-core release removes."""


def _deprecated_field(declaration: Any, old: str, new: str, value: Any, why: str) -> None:
    """Move a deprecated field's value to its new field (unless that is set too) and warn."""
    warnings.warn(f"{type(declaration).__name__}.{old} is deprecated and will be removed in the next release: "
                  f"declare {new} instead ({why})", KiapiDeprecationWarning, stacklevel=3)
    if not getattr(declaration, new):
        force_setattr(declaration, new, value)
    force_setattr(declaration, old, None)


class WeightFiles(msgspec.Struct, frozen=True, kw_only=True):
    """Files a model variant needs on disk, as a Hugging Face snapshot selection."""

    repo: str
    revision: str | None = None
    patterns: tuple[str, ...] = ()
    #: Total size of the selected files in GiB (2**30 bytes, the unit of every size a plugin
    #: declares): the download plan and ``kiapi status`` compare it with what is on disk.
    size_gib: float = 0.0
    #: Name of the plugin setting that may point at a local directory instead (``turbo_path``).
    local_dir_setting: str | None = None
    #: Other pattern sets that also make a *local directory* complete, e.g. an ``mflux-save``d
    #: model (``("transformer/*.safetensors", "vae/*.safetensors")``) instead of the repo's files.
    local_alternatives: tuple[tuple[str, ...], ...] = ()
    #: Deprecated (plugin SDK 1): the size in decimal GB (10**9 bytes); converted to
    #: ``size_gib`` with a :class:`KiapiDeprecationWarning`. Removed in the next release.
    size_gb: float | None = None

    def __post_init__(self) -> None:
        if self.size_gb is not None:
            _deprecated_field(self, "size_gb", "size_gib", gib_from_gb(self.size_gb),
                              "size_gb meant 10**9 bytes; size_gib is 2**30 bytes, like every declared size")


class Model(msgspec.Struct, frozen=True, kw_only=True):
    """One servable variant of a capability."""

    name: str
    aliases: tuple[str, ...] = ()
    default: bool = False
    features: tuple[str, ...] = ()
    description: str = ""
    #: ``"package.module:function"``; called on the model thread as
    #: ``load(model=..., quantize=..., settings=..., demo=..., cache_dir=..., **options)`` and
    #: returning the runtime object handlers use (its optional ``close()`` is called when it
    #: is freed). ``None`` for models without weights.
    loader: str | None = None
    #: Quantization the resident instance uses (``None``: unquantized).
    resident_quantize: int | None = None
    #: Resident weight size in GiB (2**30 bytes, what MLX and mflux call "GB") by quantization
    #: bits (``None``: unquantized).
    weights_gib: Mapping[int | None, float] = msgspec.field(default_factory=dict)
    weights: tuple[WeightFiles, ...] = ()
    #: Eviction order: lower priority goes first.
    priority: int = 0
    #: Plugin-private facts (repo ids, mflux config names); never served as such, but the core
    #: reads ``resident_quantize_chosen_by`` (``kiapi models``, ``GET /v1/memory``) and
    #: ``resident_quantize_setting`` (the setting a 503 hint names when a lower resident
    #: quantization would fit).
    info: Mapping[str, Any] = msgspec.field(default_factory=dict)
    #: Deprecated (plugin SDK 1): the same table as ``weights_gib`` (it was already in 2**30
    #: bytes); moved there with a :class:`KiapiDeprecationWarning`. Removed in the next release.
    weights_gb: Mapping[int | None, float] | None = None

    def __post_init__(self) -> None:
        if self.weights_gb is not None:
            _deprecated_field(self, "weights_gb", "weights_gib", self.weights_gb,
                              "the same figures, in GiB, named for their unit")


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint of a capability: ``POST /v1/{domain}/{family}/{name}``."""

    name: str
    request: type
    result: type | None
    #: ``"package.module:function"`` or a callable ``handler(job) -> result``; runs on the
    #: model thread with a :class:`kiapi_core.jobs.JobContext`.
    handler: str | Callable[..., Any]
    job_type: str
    #: ``prepare(request, ctx) -> params`` (plugin API 2; API 1: ``prepare(request, model,
    #: host) -> dict``): cheap validation on the event loop before anything is queued; raises
    #: :class:`~kiapi_core.errors.InvalidRequest`; returns the resolved parameters recorded on
    #: the job (defaults filled in, seed drawn), an instance of ``params`` (or a dict).
    prepare: Callable[..., Any] | None = None
    #: The params Struct ``prepare`` returns (plugin API 2): the job records it as JSON and the
    #: handler gets it back as this type in ``job.params``; ``None``: a plain dict.
    params: type | None = None
    #: FileRef fields (dotted paths, ``[]`` for lists: ``"loras[].file"``) and what they must
    #: hold. ``image`` inputs are checked with Pillow before the job is queued.
    inputs: Mapping[str, InputKind] = msgspec.field(default_factory=dict)
    #: ``check(request, params, ctx) -> params | None`` (API 2; API 1: ``check(request, params,
    #: inputs, host)``): slower input checks (archive layout, file headers) run in a thread
    #: after FileRefs are resolved (``ctx.inputs``) and before the job is queued; returns new
    #: params (never mutates them), or ``None`` to keep them.
    check: Callable[..., Any] | None = None
    #: ``estimate(params, ctx) -> float`` (API 1: ``estimate(params, model)``): peak memory in
    #: GiB (2**30 bytes) this request adds on top of the resident weights.
    estimate: Callable[..., float] | None = None
    #: ``transient(params) -> bool``: whether this request builds a one-off model even at the
    #: resident quantization (LoRAs); admission then counts a second copy of the weights.
    transient: Callable[[Any], bool] | None = None
    #: The handler builds its own model (training): ``estimate`` is the whole job's memory and
    #: no resident weights are counted for it.
    own_model: bool = False
    always_async: bool = False
    produces: tuple[str, ...] = ()
    summary: str | None = None
    description: str = ""
    operation_id: str | None = None
    #: Extra response descriptions by status code for the OpenAPI document.
    responses: Mapping[int, str] = msgspec.field(default_factory=dict)
    #: ``False`` when the handler (and its model's loader) never touches MLX (Pillow, numpy,
    #: torch, pure Python): its jobs then run on a separate bounded pool of threads
    #: (``KIAPI_POOL_WORKERS``), never queued behind a model job, and are measured by RSS.
    uses_mlx: bool = True
    #: How this operation's jobs are measured: ``"mlx"`` (MLX's allocator) or ``"rss"``
    #: (process resident set). ``None``: ``Model.info["memory_backend"]``, else ``"rss"`` when
    #: ``uses_mlx`` is ``False``, else ``"mlx"`` when mlx is installed, else ``"rss"``.
    memory_backend: Literal["mlx", "rss"] | None = None
    #: A request body that runs as it stands, shown by Swagger UI and ReDoc; when omitted, one
    #: is derived from the request schema's required fields (see ``kiapi_core.openapi.examples``).
    example: Mapping[str, Any] | None = None


class Capability(msgspec.Struct, frozen=True, kw_only=True):
    """A family of models and the operations they serve."""

    name: str
    domain: str
    title: str
    summary: str = ""
    #: Markdown guide for the capability's OpenAPI document (Models, TIPS, Performance ...).
    description: str = ""
    version: str = "0.1.0"
    models: tuple[Model, ...] = ()
    operations: tuple[Operation, ...] = ()
    #: A msgspec Struct of plugin settings, read from ``KIAPI_{NAME}_{FIELD}`` and the
    #: ``[{name}]`` table of the config file.
    settings: type | None = None
    #: The plugin API version the declaration is written for: 1 (``from kiapi_core import
    #: Capability``, accepted for one more release) or 2 (``from kiapi_core.sdk import
    #: Capability``, where it is the default). See docs/plugins/compatibility.md.
    plugin_api: int = 1
    #: ``smoke_test(model, demo=False) -> (operation name, JSON request body)``: the smallest
    #: real request for ``model`` (a 256-px 1-step generate, a tiny upscale), run by
    #: ``kiapi check``; ``demo`` (optional parameter) asks for the demo models' size.
    smoke_test: Callable[[Model], tuple[str, dict[str, Any]]] | None = None
    #: ``memory_examples(model) -> [(label, operation name, params), ...]``: typical requests,
    #: with resolved params as ``prepare``/``check`` would record them, that ``kiapi models
    #: --budget-gb N`` sizes against a budget ("will this run on my 16 GB Mac?").
    memory_examples: Callable[[Model], list[tuple[str, str, dict[str, Any]]]] | None = None

    @property
    def prefix(self) -> str:
        return f"/v1/{self.domain}/{self.name}"


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The public catalogue entry served by ``GET /v1/{domain}/{family}/models``."""

    name: str
    family: str
    domain: str
    aliases: list[str] = msgspec.field(default_factory=list)
    default: bool = False
    features: list[str] = msgspec.field(default_factory=list)


class Registered(msgspec.Struct, frozen=True, kw_only=True):
    """A capability and the distribution that registered it."""

    capability: Capability
    plugin: str
    distribution: str


class Registry:
    """Capabilities by name, with model resolution. Built once per host."""

    def __init__(self) -> None:
        self._capabilities: dict[str, Registered] = {}
        self._names: dict[tuple[str, str], Model] = {}
        self._routes: dict[str, str] = {}

    def add(self, capability: Capability, *, plugin: str, distribution: str) -> None:
        """Add a capability, refusing anything that clashes with what is already there."""
        _check_declaration(capability, distribution)
        name = capability.name
        if name in self._capabilities:
            other = self._capabilities[name].distribution
            raise StartupError(
                f"capability {name!r} is registered by both {other} and {distribution}; "
                "uninstall one of them or disable it with KIAPI_DISABLE_PLUGINS"
            )
        for op in capability.operations:
            path = f"{capability.prefix}/{op.name}"
            if path in self._routes:
                raise StartupError(
                    f"route POST {path} is registered by both {self._routes[path]} and {distribution}"
                )
        names = {(name, alias.lower()): model for model in capability.models for alias in (model.name, *model.aliases)}
        self._capabilities[name] = Registered(capability=capability, plugin=plugin, distribution=distribution)
        self._names.update(names)
        for op in capability.operations:
            self._routes[f"{capability.prefix}/{op.name}"] = distribution

    def remove(self, name: str) -> None:
        """Take a capability out again (its plugin was skipped after registering)."""
        registered = self._capabilities.pop(name, None)
        if registered is None:
            return
        self._names = {k: v for k, v in self._names.items() if k[0] != name}
        prefix = registered.capability.prefix + "/"
        self._routes = {path: d for path, d in self._routes.items() if not path.startswith(prefix)}

    def __iter__(self):
        return iter(r.capability for r in sorted(self._capabilities.values(), key=_order))

    def __len__(self) -> int:
        return len(self._capabilities)

    def __contains__(self, name: object) -> bool:
        return name in self._capabilities

    def get(self, name: str) -> Capability:
        return self._capabilities[name].capability

    def registered(self) -> list[Registered]:
        return sorted(self._capabilities.values(), key=_order)

    def resolve_model(self, family: str, name: str | None) -> Model:
        """The model a request names (name or alias, any case), or the default when omitted."""
        capability = self.get(family)
        if name is None or name == "":
            return default_model(capability)
        model = self._names.get((family, name.lower()))
        if model is None:
            valid = ", ".join(m.name for m in capability.models)
            aliases = ", ".join(a for m in capability.models for a in m.aliases)
            raise UnknownModel(
                f"unknown {family} model {name!r}; use one of: {valid}"
                + (f" (aliases: {aliases})" if aliases else "")
                + f". See GET {capability.prefix}/models.",
                valid=[m.name for m in capability.models],
            )
        return model

    def model_specs(self, family: str) -> list[ModelSpec]:
        capability = self.get(family)
        return [
            ModelSpec(
                name=m.name, family=family, domain=capability.domain, aliases=list(m.aliases),
                default=m.default, features=list(m.features),
            )
            for m in capability.models
        ]


def default_model(capability: Capability) -> Model:
    for model in capability.models:
        if model.default:
            return model
    return capability.models[0]


def _order(registered: Registered) -> tuple[str, str]:
    return (registered.capability.domain, registered.capability.name)


def name_problem(kind: str, name: object) -> str | None:
    """Why ``name`` cannot be a capability, domain or operation name, or ``None``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        return (f"{kind} name {name!r} is not a valid URL path segment: use 1-64 lower-case ASCII "
                "letters, digits, '-' or '_' (starting and ending with a letter or digit)")
    return None


def naming_problems(capability: Capability) -> list[str]:
    """Capability, domain and operation names that cannot be served (each a sentence)."""
    named = [("capability", capability.name), ("domain", capability.domain),
             *(("operation", op.name) for op in capability.operations)]
    invalid = [f"{kind} name {name!r}" for kind, name in named if name_problem(kind, name)]
    problems = []
    if invalid:
        verb = "is not a valid URL path segment" if len(invalid) == 1 else "are not valid URL path segments"
        problems.append(f"{', '.join(invalid)} {verb}: use 1-64 lower-case ASCII letters, digits, '-' or '_' "
                        "(starting and ending with a letter or digit)")
    if capability.domain in RESERVED_DOMAINS:
        problems.append(f"domain {capability.domain!r} is reserved for the core's own /v1/{capability.domain} "
                        "endpoints; choose a media domain such as 'image', 'video', 'audio' or 'text'")
    for op in capability.operations:
        if op.name in RESERVED_OPERATIONS:
            problems.append(f"operation name {op.name!r} is reserved ({', '.join(sorted(RESERVED_OPERATIONS))} "
                            "are served by the core under every capability)")
    for model in capability.models:
        if not isinstance(model.name, str) or not MODEL_NAME_PATTERN.fullmatch(model.name):
            problems.append(f"model name {model.name!r} is invalid: use 1-64 ASCII letters, digits, "
                            "'.', '_', '+' or '-', without spaces, '/' or ':' (aliases may be freer)")
        problems += [f"model {model.name!r} has an empty or blank alias" for alias in model.aliases
                     if not isinstance(alias, str) or not alias.strip()]
    return problems


def declaration_problems(capability: Capability) -> list[str]:
    """Why the registry refuses ``capability`` (each a sentence), empty when it accepts it: the
    one set of rules the registry enforces and the contract check reports."""
    problems = naming_problems(capability)
    if not capability.models:
        problems.append("declares no models")
    defaults = [m.name for m in capability.models if m.default]
    if len(defaults) > 1:
        problems.append(f"marks several models as default ({', '.join(defaults)}); mark one, or none to make "
                        "the first the default")
    ops = [op.name for op in capability.operations]
    problems += [f"declares the operation {name!r} twice" for name in sorted({n for n in ops if ops.count(n) > 1})]
    owners: dict[str, str] = {}
    for model in capability.models:
        for name in (model.name, *model.aliases):
            key = str(name).lower()
            if owners.get(key, model.name) != model.name:
                problems.append(f"the name {name!r} is used twice (models {owners[key]!r} and {model.name!r})")
            owners.setdefault(key, model.name)
    return problems


def _check_declaration(capability: Capability, distribution: str) -> None:
    problems = declaration_problems(capability)
    if problems:
        raise StartupError(f"{distribution}: capability {capability.name!r}: " + "; ".join(problems))
