"""The plugin contract check that plugin authors call from their own tests.

A plugin can load and even serve requests while breaking rules that only bite later: a
``torch`` import at module level makes ``kiapi --help`` slow for everyone, a second default
model makes the choice depend on declaration order, a Struct called ``Job`` makes generated
clients pick the wrong schema, a missing memory estimate lets a job past admission that then
runs the machine out of memory. :func:`check_plugin` finds these before users do::

    from kiapi_core.contract import assert_plugin_contract

    def test_contract():
        assert_plugin_contract("kiapi_hello")

The import check runs in a fresh interpreter, since the test process has usually imported
every heavy library already.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec

from .registry import Capability

__all__ = ["DEFAULT_HEAVY", "assert_plugin_contract", "check_plugin", "clash_problems", "declaration_problems",
           "openapi_problems"]

#: Libraries a plugin must not import at import or registration time (only in loaders/handlers).
DEFAULT_HEAVY: tuple[str, ...] = ("mlx", "mflux", "torch", "transformers", "diffusers", "jax", "tensorflow")


def assert_plugin_contract(plugin: Any, **options: Any) -> None:
    """Raise AssertionError listing every problem :func:`check_plugin` finds."""
    problems = check_plugin(plugin, **options)
    if problems:
        raise AssertionError(f"{_label(plugin)} breaks the kiapi plugin contract:\n"
                             + "\n".join(f"- {p}" for p in problems))


def check_plugin(
    plugin: Any,
    *,
    heavy: Iterable[str] = DEFAULT_HEAVY,
    allowed_clashes: Iterable[str] = (),
    compare_installed: bool = True,
    others: Iterable[Capability] | None = None,
) -> list[str]:
    """Every way ``plugin`` breaks the contract, as sentences; empty when it keeps it.

    :param plugin: an import string (``"kiapi_hello"``), a module or a plugin object.
    :param heavy: top-level module names that importing and registering must not pull in.
    :param allowed_clashes: OpenAPI component names allowed to differ from another plugin's
        (names fixed by an external wire contract); never the core's.
    :param compare_installed: compare component names with the installed plugins' capabilities.
    :param others: capabilities to compare with instead of the installed ones.
    """
    try:
        obj = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
    except Exception as exc:  # an import failure is the first problem to report
        return [f"cannot be imported: {exc!r}"]
    problems: list[str] = []
    from .testing.helpers import build_test_host

    with tempfile.TemporaryDirectory(prefix="kiapi-contract-") as tmp:
        capabilities: list[Capability] = []
        try:
            host = build_test_host(Path(tmp) / "strict", plugins=[obj])
            record = next(r for r in host.plugins if not r.default)
            capabilities = [host.registry.get(name) for name in record.capabilities]
        except Exception as exc:  # PluginError, StartupError or the plugin's own
            problems.append(f"does not load in strict mode: {exc}")
            capabilities = _collect(obj, build_test_host(Path(tmp) / "core"))
        problems += _hook_problems(obj)
        if others is None and compare_installed:
            installed = _installed(Path(tmp) / "installed", _module_name(obj))
            problems += clash_problems(capabilities, installed)
            others = [capability for capability, _ in installed]
    for capability in capabilities:
        problems += declaration_problems(capability)
    problems += openapi_problems(capabilities, others or (), allowed_clashes=allowed_clashes)
    problems += _probe(obj, capabilities, tuple(heavy))
    return problems


def declaration_problems(capability: Capability) -> list[str]:
    """Problems of one declaration: defaults, aliases, memory estimates, operation wiring."""
    from .registry import declaration_problems as registry_problems

    where = f"capability {capability.name!r}"
    # The registry's own rules first (what would make it refuse the capability), then lints.
    problems: list[str] = [f"{where}: {p}" for p in registry_problems(capability)]
    for model in capability.models:
        seen: set[str] = set()
        for name in (model.name, *model.aliases):  # harmless to the registry, but a slip
            if name.lower() in seen:
                problems.append(f"{where}: the name {name!r} is used twice by model {model.name!r}")
            seen.add(name.lower())
        if model.loader is not None and not model.weights_gib:
            problems.append(f"{where}: model {model.name!r} has a loader but no weights_gib; declare its "
                            "resident size per quantization ({None: 0.0} when it holds no weights)")
        if isinstance(model.loader, str) and ":" not in model.loader:
            problems.append(f"{where}: model {model.name!r} loader {model.loader!r} is not 'module:function'")
    model_backed = any(m.loader is not None for m in capability.models)
    for op in capability.operations:
        at = f"{where} operation {op.name!r}"
        if model_backed and op.estimate is None:
            problems.append(f"{at}: models load weights, so the operation needs estimate(params, model) "
                            "-> peak GiB, or admission cannot protect the memory budget")
        if not _is_struct(op.request):
            problems.append(f"{at}: request must be a msgspec.Struct type, not {op.request!r}")
        if op.result is not None and not _is_struct(op.result):
            problems.append(f"{at}: result must be a msgspec.Struct type or None, not {op.result!r}")
        if isinstance(op.handler, str) and ":" not in op.handler:
            problems.append(f"{at}: handler {op.handler!r} is not 'module:function'")
        for field in op.inputs:
            top = field.split(".")[0].removesuffix("[]")
            if _is_struct(op.request) and top not in {f.name for f in msgspec.structs.fields(op.request)}:
                problems.append(f"{at}: inputs names {field!r} but the request has no field {top!r}")
        for name in ("prepare", "check", "estimate"):
            value = getattr(op, name)
            if value is not None and not callable(value):
                problems.append(f"{at}: {name} must be callable")
    if capability.settings is not None and not _is_struct(capability.settings):
        problems.append(f"{where}: settings must be a msgspec.Struct type")
    return problems


def clash_problems(capabilities: Iterable[Capability],
                   installed: Iterable[tuple[Capability, str]]) -> list[str]:
    """Capabilities named like one an installed distribution already serves: only one of the
    two would be served (see the precedence rule in :mod:`kiapi_core.plugins`)."""
    served = {capability.name: distribution for capability, distribution in installed}
    return [f"capability {c.name!r} is also registered by the installed {served[c.name]}: only one of "
            "them can be served; choose another name" for c in capabilities if c.name in served]


def openapi_problems(capabilities: Iterable[Capability], others: Iterable[Capability] = (), *,
                     allowed_clashes: Iterable[str] = ()) -> list[str]:
    """Capability documents that fail to generate, have dangling ``$ref``s, or reuse a component
    name of the core's or of ``others`` for a different schema."""
    from .openapi.compare import unresolved_refs
    from .openapi.generate import capability_document

    problems: list[str] = []
    core = _core_components()
    allowed = set(allowed_clashes)
    theirs: dict[str, tuple[str, Any]] = {}
    for other in others:
        try:
            for name, schema in capability_document(other)["components"]["schemas"].items():
                theirs.setdefault(name, (other.name, schema))
        except Exception:  # another plugin's problem, not this one's
            continue
    for capability in capabilities:
        where = f"capability {capability.name!r}"
        try:
            document = capability_document(capability)
            msgspec.json.encode(document)
        except Exception as exc:  # ValueError for clashes, TypeError for types
            problems.append(f"{where}: its OpenAPI document cannot be generated: {exc}")
            continue
        problems += [f"{where}: OpenAPI {ref}" for ref in unresolved_refs(document)]
        for name, schema in document["components"]["schemas"].items():
            if name in core and core[name] != schema:
                problems.append(f"{where}: OpenAPI component {name!r} clashes with the core's schema of "
                                "that name; rename the Struct (e.g. prefix it with the capability name)")
            elif name in theirs and theirs[name][1] != schema and name not in allowed:
                problems.append(f"{where}: OpenAPI component {name!r} differs from the one capability "
                                f"{theirs[name][0]!r} publishes; rename the Struct")
    return problems


def _core_components() -> dict[str, Any]:
    from .files.refs import FileRef
    from .openapi.generate import add_core_components
    from .openapi.root import root_document
    from .openapi.schema import SchemaBuilder

    builder = SchemaBuilder()
    add_core_components(builder)
    builder.schema(FileRef)
    return {**builder.components, **root_document([])["components"]["schemas"]}


def _collect(plugin: Any, host: Any) -> list[Capability]:
    """The plugin's declarations, gathered without the registry's checks (best effort)."""
    from .plugins import new_plugin_manager

    pm = new_plugin_manager()
    collected: list[Capability] = []
    try:
        pm.register(plugin, name="contract-under-test")
        for impl in pm.hook.register_capabilities.get_hookimpls():
            arguments = {"register": collected.append, "host": host}
            impl.function(**{k: v for k, v in arguments.items() if k in impl.argnames})
    except Exception:  # already reported as a strict-mode load failure
        pass
    return [c for c in collected if isinstance(c, Capability)]


def _hook_problems(plugin: Any) -> list[str]:
    from .plugins import hookimpl_problems, new_plugin_manager

    pm = new_plugin_manager()
    try:
        pm.register(plugin, name="contract-hooks")
    except Exception:  # reported by the strict load
        return []
    if not pm.get_hookcallers(plugin):
        return ["implements no kiapi hook: mark the functions with @hookimpl (from kiapi_core import hookimpl)"]
    return hookimpl_problems(pm, plugin)


def _module_name(plugin: Any) -> str:
    return plugin.__name__ if isinstance(plugin, ModuleType) else type(plugin).__module__


def _installed(data_dir: Path, own_module: str) -> list[tuple[Capability, str]]:
    """Capabilities of the installed plugins (entry points) with their distributions, except
    those the plugin under test (module ``own_module``) registers itself."""
    from .testing.helpers import build_test_host

    try:
        host = build_test_host(data_dir, load_entrypoints=True, strict_plugins=False)
    except Exception:  # other plugins' problems are not this plugin's
        return []
    modules = {r.name: (r.entry_point or "").partition("=")[2].strip().split(":")[0] for r in host.plugins}
    return [(r.capability, r.distribution) for r in host.registry.registered()
            if modules.get(r.plugin) != own_module]


_PROBE = r"""
import importlib, json, sys, tempfile
target, register, heavy, strings = json.loads(sys.argv[1])
out = {"import": None, "heavy": [], "unresolved": []}
try:
    module = importlib.import_module(target)
    if register:
        from kiapi_core.testing.helpers import build_test_host
        build_test_host(tempfile.mkdtemp(prefix="kiapi-probe-"), plugins=[module])
except Exception as exc:
    out["import"] = repr(exc)
out["heavy"] = sorted({m.split(".")[0] for m in list(sys.modules)} & set(heavy))
from kiapi_core.imports import resolve_callable  # the resolver the host uses, not a copy
for what, value in strings:
    try:
        if not callable(resolve_callable(value, what)):
            raise TypeError(f"{value.partition(':')[2]} is not callable")
    except Exception as exc:
        out["unresolved"].append(f"{what} {value!r} does not resolve: {exc!r}")
print(json.dumps(out))
"""


def _probe(plugin: Any, capabilities: list[Capability], heavy: tuple[str, ...]) -> list[str]:
    """Import (and register) the plugin in a fresh interpreter, note the heavy modules that came
    with it, then resolve every ``"module:function"`` handler and loader string."""
    register = isinstance(plugin, ModuleType)
    target = plugin.__name__ if register else type(plugin).__module__
    strings = [(f"capability {c.name!r} operation {op.name!r} handler", op.handler)
               for c in capabilities for op in c.operations if isinstance(op.handler, str)]
    strings += [(f"capability {c.name!r} model {m.name!r} loader", m.loader)
                for c in capabilities for m in c.models if isinstance(m.loader, str)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([target, register, heavy, strings])],
                              capture_output=True, text=True, timeout=300, env=env, check=False)
        result: Mapping[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as exc:
        return [f"could not be probed in a fresh interpreter: {exc!r}"]
    problems = []
    if result["import"] and register:  # an object's defining module may be a test file: not its problem
        problems.append(f"importing {target} in a fresh interpreter failed: {result['import']}")
    if result["heavy"]:
        problems.append(f"importing {target} and registering it imports {', '.join(result['heavy'])}; "
                        "import heavy libraries inside the model loader or the handlers instead")
    return problems + list(result["unresolved"])


def _is_struct(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, msgspec.Struct)


def _label(plugin: Any) -> str:
    if isinstance(plugin, str):
        return plugin
    return getattr(plugin, "__name__", None) or type(plugin).__name__
