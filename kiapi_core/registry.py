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

from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from .errors import StartupError, UnknownModel

InputKind = Literal["image", "file"]


class WeightFiles(msgspec.Struct, frozen=True, kw_only=True):
    """Files a model variant needs on disk, as a Hugging Face snapshot selection."""

    repo: str
    revision: str | None = None
    patterns: tuple[str, ...] = ()
    size_gb: float = 0.0
    #: Name of the plugin setting that may point at a local directory instead (``turbo_path``).
    local_dir_setting: str | None = None
    #: Other pattern sets that also make a *local directory* complete, e.g. an ``mflux-save``d
    #: model (``("transformer/*.safetensors", "vae/*.safetensors")``) instead of the repo's files.
    local_alternatives: tuple[tuple[str, ...], ...] = ()


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
    #: Resident weight size in GB (2**30 bytes, as MLX counts) by quantization bits (``None``:
    #: unquantized).
    weights_gb: Mapping[int | None, float] = msgspec.field(default_factory=dict)
    weights: tuple[WeightFiles, ...] = ()
    #: Eviction order: lower priority goes first.
    priority: int = 0
    #: Plugin-private facts (repo ids, mflux config names); never served as such, but the core
    #: reads ``resident_quantize_chosen_by`` (``kiapi models``, ``GET /v1/memory``) and
    #: ``resident_quantize_setting`` (the setting a 503 hint names when a lower resident
    #: quantization would fit).
    info: Mapping[str, Any] = msgspec.field(default_factory=dict)


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint of a capability: ``POST /v1/{domain}/{family}/{name}``."""

    name: str
    request: type
    result: type | None
    #: ``"package.module:function"`` or a callable ``handler(job) -> result``; runs on the
    #: model thread with a :class:`kiapi_core.jobs.JobContext`.
    handler: str | Callable[..., Any]
    job_type: str
    #: ``prepare(request, model, host) -> dict``: cheap validation on the event loop before
    #: anything is queued; raises :class:`~kiapi_core.errors.InvalidRequest`; returns the
    #: resolved parameters recorded on the job (defaults filled in, seed drawn).
    prepare: Callable[..., dict[str, Any]] | None = None
    #: FileRef fields (dotted paths, ``[]`` for lists: ``"loras[].file"``) and what they must
    #: hold. ``image`` inputs are checked with Pillow before the job is queued.
    inputs: Mapping[str, InputKind] = msgspec.field(default_factory=dict)
    #: ``check(request, params, inputs, host)``: slower input checks (archive layout, file
    #: headers) run in a thread after FileRefs are resolved and before the job is queued.
    check: Callable[..., None] | None = None
    #: ``estimate(params, model) -> float``: peak memory in GB this request adds on top of the
    #: resident weights.
    estimate: Callable[..., float] | None = None
    #: ``transient(params) -> bool``: whether this request builds a one-off model even at the
    #: resident quantization (LoRAs); admission then counts a second copy of the weights.
    transient: Callable[[dict[str, Any]], bool] | None = None
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
        names: dict[tuple[str, str], Model] = {}
        for model in capability.models:
            for alias in (model.name, *model.aliases):
                key = (name, alias.lower())
                if key in names and names[key] is not model:
                    raise StartupError(
                        f"{distribution}: capability {name!r} uses the name {alias!r} for both "
                        f"{names[key].name!r} and {model.name!r}"
                    )
                names[key] = model
        self._capabilities[name] = Registered(capability=capability, plugin=plugin, distribution=distribution)
        self._names.update(names)
        for op in capability.operations:
            self._routes[f"{capability.prefix}/{op.name}"] = distribution

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


def _check_declaration(capability: Capability, distribution: str) -> None:
    where = f"{distribution}: capability {capability.name!r}"
    if not capability.name.replace("-", "").replace("_", "").isalnum() or not capability.name.islower():
        raise StartupError(f"{where}: names must be lower-case letters, digits, '-' or '_'")
    if not capability.models:
        raise StartupError(f"{where} declares no models")
    defaults = [m.name for m in capability.models if m.default]
    if len(defaults) > 1:
        raise StartupError(f"{where} marks several models as default: {', '.join(defaults)}")
    ops = [op.name for op in capability.operations]
    if len(set(ops)) != len(ops):
        raise StartupError(f"{where} declares an operation twice")
    if "models" in ops or "openapi.json" in ops or "docs" in ops or "redoc" in ops:
        raise StartupError(f"{where}: operation names models, openapi.json, docs and redoc are reserved")
