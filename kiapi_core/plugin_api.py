"""Plugin API versions: how the host calls a declaration's request-time hooks.

The host's request path calls the version-1 shapes (``prepare(request, model, host)``,
``check(request, params, inputs, host)``, ``estimate(params, model)``, ``transient(params)``
on a params dict). A version-2 declaration (``kiapi_core.sdk``) is adapted once, when it is
registered: its hooks get a typed :class:`~kiapi_core.sdk.context.RequestContext`, its params
travel as the plugin's own Struct (kept as JSON on the job, converted back for ``check``,
``estimate``, ``transient`` and the handler), and ``check`` returns new params instead of
mutating them. Version-1 declarations are served unchanged for one more release.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .errors import PluginError
from .memory.loaders import INPUT_GB
from .registry import Capability, Model, Operation
from .validation import redact

#: Params keys the core itself sets (``input_gb``: decoding the image inputs, for admission).
CORE_PARAM_KEYS = (INPUT_GB,)
#: The plugin API this core implements, and the versions it still accepts.
PLUGIN_API_VERSION = 2
SUPPORTED_PLUGIN_APIS = (1, 2)


def adapt(capability: Capability, host: Any) -> Capability:
    """``capability`` with its hooks in the shapes the request path calls (version 1)."""
    if capability.plugin_api not in SUPPORTED_PLUGIN_APIS:
        raise PluginError(f"capability {capability.name!r} is written for plugin API {capability.plugin_api}; "
                          f"this kiapi-core serves versions {', '.join(map(str, SUPPORTED_PLUGIN_APIS))}")
    if capability.plugin_api == 1:
        return capability
    problems = [p for op in capability.operations for p in signature_problems(op)]
    if problems:
        raise PluginError(f"capability {capability.name!r} (plugin API 2): " + "; ".join(problems))
    contexts = _Contexts(capability, host)
    operations = tuple(_adapt(op, contexts) for op in capability.operations)
    return msgspec.structs.replace(capability, operations=operations)


#: The positional arguments each hook of plugin API 2 is called with.
_V2_ARGUMENTS = {"prepare": ("request", "ctx"), "check": ("request", "params", "ctx"),
                 "estimate": ("params", "ctx"), "transient": ("params",)}


def signature_problems(op: Operation) -> list[str]:
    """Hooks of ``op`` that cannot be called the plugin API 2 way (a version-1 ``prepare(request,
    model, host)`` under a version-2 Capability, say): found at registration, not at the first
    request."""
    problems = []
    for name, arguments in _V2_ARGUMENTS.items():
        hook = getattr(op, name)
        if hook is None:
            continue
        try:
            inspect.signature(hook).bind(*arguments)
        except TypeError:
            problems.append(f"operation {op.name!r}: {name} must accept ({', '.join(arguments)}), "
                            f"not {_describe(hook)}; a version-1 hook needs the version-1 Capability "
                            "(from kiapi_core import Capability) or the plugin_api=1 field")
        except ValueError:  # no signature (a builtin): called and reported at request time
            continue
    return problems


def _describe(hook: Callable[..., Any]) -> str:
    try:
        return str(inspect.signature(hook))
    except (TypeError, ValueError):
        return repr(hook)


def typed_params(operation: Operation, params: Mapping[str, Any]) -> Any:
    """The job's recorded params as the operation's params Struct (a dict when it has none)."""
    if operation.params is None or isinstance(params, operation.params):
        return params
    return msgspec.convert(params, operation.params, strict=False)


class _Contexts:
    """Builds RequestContexts for one capability; settings are read once, lazily."""

    def __init__(self, capability: Capability, host: Any) -> None:
        self.capability = capability
        self._host = host
        self._settings: Any = msgspec.UNSET

    def __call__(self, model: Model, inputs: Mapping[str, Any] | None = None, host: Any = None) -> Any:
        """The context of one request; ``host`` is the serving host when the request path passes
        it (its settings are the live ones), else the host the capability registered with."""
        from .sdk.context import Limits, RequestContext

        if host is not None and callable(getattr(host, "plugin_settings", None)):
            settings = host.plugin_settings(self.capability.name)
        else:
            if self._settings is msgspec.UNSET:
                self._settings = self._host.plugin_settings(self.capability.name, self.capability.settings)
            settings, host = self._settings, self._host
        core = host.settings
        return RequestContext(capability=self.capability.name, model=model, settings=settings,
                              demo=core.demo, inputs=dict(inputs or {}),
                              limits=Limits(max_image_pixels=core.max_image_pixels, max_upload_mb=core.max_upload_mb,
                                            memory_budget_gb=getattr(host, "memory_budget_gb", None)))


def _adapt(op: Operation, contexts: _Contexts) -> Operation:
    changes: dict[str, Callable[..., Any]] = {}
    prepare, check, estimate, transient = op.prepare, op.check, op.estimate, op.transient
    if prepare is not None:
        def prepare_v1(request: Any, model: Model, host: Any = None) -> dict[str, Any]:
            return _builtins(prepare(request, contexts(model, host=host)))
        changes["prepare"] = prepare_v1
    if check is not None:
        def check_v1(request: Any, params: dict[str, Any], inputs: Mapping[str, Any], host: Any) -> None:
            model = host.registry.resolve_model(contexts.capability.name, getattr(request, "model", None))
            new = check(request, typed_params(op, params), contexts(model, inputs, host))
            if new is not None:  # the plugin returned new params; the record takes them
                replacement = _builtins(new)
                core = {k: params[k] for k in CORE_PARAM_KEYS if k in params}  # set by the core, kept
                params.clear()
                params.update(replacement, **core)
        changes["check"] = check_v1
    if estimate is not None:
        def estimate_v1(params: Mapping[str, Any], model: Model) -> float:
            return float(estimate(typed_params(op, params), contexts(model)))
        changes["estimate"] = estimate_v1
    if transient is not None:
        def transient_v1(params: Mapping[str, Any]) -> bool:
            return bool(transient(typed_params(op, params)))
        changes["transient"] = transient_v1
    return msgspec.structs.replace(op, **changes)


def _builtins(params: Any) -> dict[str, Any]:
    value = msgspec.to_builtins(params)
    if not isinstance(value, dict):
        raise PluginError(f"params must be a Struct or a dict, got {type(params).__name__}")
    return redact(value)


__all__ = ["PLUGIN_API_VERSION", "SUPPORTED_PLUGIN_APIS", "adapt", "typed_params"]
