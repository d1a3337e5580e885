"""The plugin contract check (kiapi_core.contract): fine plugins pass, each broken rule is named."""

import textwrap

import pytest

from kiapi_core.contract import DEFAULT_HEAVY, assert_plugin_contract, check_plugin

BASE = '''
import msgspec
from kiapi_core import Capability, Model, Operation, hookimpl

class {prefix}Request(msgspec.Struct, kw_only=True):
    text: str = "x"
    model: str | None = None

class {prefix}Result(msgspec.Struct, kw_only=True):
    text: str

def run(job):
    return {prefix}Result(text=job.request.text)

MODELS = {models}
OPERATIONS = (Operation(name="run", request={prefix}Request, result={prefix}Result, handler={handler},
                        job_type="{name}", estimate={estimate}),)

@hookimpl
{hook_def} register_capabilities(register):
    register(Capability(name="{name}", domain="text", title="T", models=MODELS, operations=OPERATIONS))
'''
GOOD_MODELS = '(Model(name="a", aliases=("first",), default=True), Model(name="b"))'


def _plugin(site, module, *, prefix="Contract", models=GOOD_MODELS, handler="run", estimate="None",
            hook_def="def", header="", name=None):
    source = header + BASE.format(prefix=prefix, models=models, handler=handler, estimate=estimate,
                                  hook_def=hook_def, name=name or module.replace("_", "-"))
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    return module


@pytest.fixture
def site(tmp_path, monkeypatch):
    path = tmp_path / "site"
    path.mkdir()
    monkeypatch.syspath_prepend(str(path))
    return path


def test_echo_plugin_keeps_the_contract():
    assert check_plugin("kiapi_echo") == []
    assert_plugin_contract("kiapi_echo")


def test_a_well_formed_plugin_passes(site):
    assert check_plugin(_plugin(site, "contract_good")) == []


def test_default_heavy_list_names_the_usual_suspects():
    assert {"mlx", "mflux", "torch", "transformers", "diffusers"} <= set(DEFAULT_HEAVY)
    assert "PIL" not in DEFAULT_HEAVY  # a Pillow plugin may import it; pass heavy=... to forbid it


def test_heavy_import_at_import_time_is_reported(site):
    (site / "contract_fakeheavy.py").write_text("LOADED = True\n")
    module = _plugin(site, "contract_heavy", header="import contract_fakeheavy\n")
    problems = check_plugin(module, heavy=("contract_fakeheavy",))
    assert any("imports contract_fakeheavy" in p for p in problems), problems


def test_heavy_import_inside_a_handler_module_is_fine(site):
    (site / "contract_fakeheavy2.py").write_text("LOADED = True\n")
    (site / "contract_lazy_handlers.py").write_text("import contract_fakeheavy2\n\ndef run(job):\n    return None\n")
    module = _plugin(site, "contract_lazy", handler='"contract_lazy_handlers:run"')
    assert check_plugin(module, heavy=("contract_fakeheavy2",)) == []


def test_at_most_one_default_model_the_registry_rule(site):
    models = '(Model(name="a", default=True), Model(name="b", default=True))'
    problems = check_plugin(_plugin(site, "contract_default_2", models=models))
    assert any("marks several models as default (a, b)" in p for p in problems), problems
    # None marked: the first is the default, as the registry resolves it.
    assert check_plugin(_plugin(site, "contract_default_0", models='(Model(name="a"), Model(name="b"))')) == []


def test_duplicate_aliases_are_reported(site):
    models = '(Model(name="a", aliases=("x", "X"), default=True), Model(name="b", aliases=("A",)))'
    problems = check_plugin(_plugin(site, "contract_aliases", models=models))
    assert any("'X' is used twice by model 'a'" in p for p in problems), problems
    assert any("'A' is used twice (models 'a' and 'b')" in p for p in problems), problems


def test_model_backed_operations_need_memory_estimates(site):
    models = '(Model(name="a", default=True, loader="contract_loader_mod:load"),)'
    (site / "contract_loader_mod.py").write_text("def load(model, **options):\n    return object()\n")
    problems = check_plugin(_plugin(site, "contract_memory", models=models))
    assert any("has a loader but no weights_gib" in p for p in problems), problems
    assert any("operation 'run': models load weights, so the operation needs estimate" in p for p in problems)
    fixed = '(Model(name="a", default=True, loader="contract_loader_mod:load", weights_gib={None: 1.0}),)'
    assert check_plugin(_plugin(site, "contract_memory_ok", models=fixed, estimate="lambda p, m: 0.5")) == []


def test_unresolvable_handler_and_loader_strings_are_reported(site):
    models = '(Model(name="a", default=True, loader="contract_nowhere:load", weights_gib={None: 0.0}),)'
    problems = check_plugin(_plugin(site, "contract_strings", models=models, handler='"contract_nowhere:run"',
                                    estimate="lambda p, m: 0.0"))
    assert any("handler 'contract_nowhere:run' does not resolve" in p for p in problems), problems
    assert any("loader 'contract_nowhere:load' does not resolve" in p for p in problems), problems



def test_strings_resolve_as_the_host_resolves_them(site):
    """The probe uses the host's resolver: a ``module:Object.attribute`` loader the host can load
    passes, one naming a missing attribute does not."""
    (site / "contract_dotted_mod.py").write_text("class Loaders:\n    @staticmethod\n    def load(**options):\n"
                                                 "        return object()\n")
    models = '(Model(name="a", default=True, loader="contract_dotted_mod:Loaders.load", weights_gib={None: 0.0}),)'
    assert check_plugin(_plugin(site, "contract_dotted", models=models, estimate="lambda p, m: 0.0")) == []
    models = '(Model(name="a", default=True, loader="contract_dotted_mod:Loaders.nope", weights_gib={None: 0.0}),)'
    problems = check_plugin(_plugin(site, "contract_dotted_bad", models=models, estimate="lambda p, m: 0.0"))
    assert any("loader 'contract_dotted_mod:Loaders.nope' does not resolve" in p for p in problems), problems

def test_component_name_clashing_with_the_core_is_reported(site):
    (site / "contract_job.py").write_text(textwrap.dedent('''
        import msgspec
        from kiapi_core import Capability, Model, Operation, hookimpl

        class Health(msgspec.Struct):
            mine: int = 1

        @hookimpl
        def register_capabilities(register):
            register(Capability(name="contract-job", domain="text", title="T",
                                models=(Model(name="a", default=True),),
                                operations=(Operation(name="run", request=Health, result=None,
                                                      handler="x:y", job_type="t"),)))
    '''))
    problems = check_plugin("contract_job")
    assert any("component 'Health' clashes with the core's" in p for p in problems), problems


def test_component_name_clashing_with_another_plugin_is_reported(site):
    import importlib

    mine = _plugin(site, "contract_mine", prefix="Shared")
    theirs = _plugin(site, "contract_theirs", prefix="Shared", name="theirs")
    (site / "contract_theirs.py").write_text((site / "contract_theirs.py").read_text()
                                             .replace("text: str\n", "text: str\n    extra: int = 0\n"))
    other = importlib.import_module(theirs)
    captured = []
    other.register_capabilities(captured.append)
    problems = check_plugin(mine, others=captured)
    assert any("component 'SharedResult' differs from the one capability 'theirs'" in p for p in problems)
    assert check_plugin(mine, others=captured, allowed_clashes={"SharedResult"}) == []


@pytest.mark.filterwarnings("ignore:coroutine 'register_capabilities' was never awaited:RuntimeWarning")
def test_async_hooks_and_missing_hookimpl_are_reported(site):
    problems = check_plugin(_plugin(site, "contract_async", hook_def="async def"))
    assert any("implements 'register_capabilities' with 'async def'" in p for p in problems), problems
    (site / "contract_unmarked.py").write_text("def register_capabilities(register):\n    pass\n")
    assert any("implements no kiapi hook" in p for p in check_plugin("contract_unmarked"))


def test_misspelled_hook_fails_the_strict_load(site):
    (site / "contract_typo.py").write_text(
        "from kiapi_core import hookimpl\n\n@hookimpl\ndef register_capabilites(register):\n    pass\n")
    problems = check_plugin("contract_typo")
    assert any("does not load in strict mode" in p and "register_capabilites" in p for p in problems), problems


def test_import_failure_is_reported(site):
    (site / "contract_explodes.py").write_text("raise ImportError('no module named mlx_magic')\n")
    assert check_plugin("contract_explodes") == ["cannot be imported: ImportError('no module named mlx_magic')"]


def test_assert_plugin_contract_lists_every_problem(site):
    models = '(Model(name="a", default=True), Model(name="b", default=True, aliases=("a",)))'
    module = _plugin(site, "contract_many", models=models)
    with pytest.raises(AssertionError) as info:
        assert_plugin_contract(module)
    message = str(info.value)
    assert message.startswith("contract_many breaks the kiapi plugin contract:")
    assert "several models as default" in message and "used twice" in message


# The spec/ wire contract fixes these names for both ernie and seedvr2; each capability's
# OpenAPI document is self-contained, so the two differing schemas never meet in one document.
SPEC_SHARED_NAMES = {"ImageResponse", "_Timings"}


@pytest.mark.parametrize("package", ["kiapi_ernie", "kiapi_seedvr2"])
def test_real_plugins_keep_the_contract(package):
    pytest.importorskip(package)
    assert_plugin_contract(package, allowed_clashes=SPEC_SHARED_NAMES)


# --- compatibility: the kiapi-core range a distribution requires -------------------------------

def _install(site, name, requires):
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    lines = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n{lines}")
    (info / "entry_points.txt").write_text("[kiapi]\ncompat = kiapi_compat_mod\n")
    (site / "kiapi_compat_mod.py").write_text("import sys\nsys.modules['kiapi_compat_imported'] = sys\n"
                                              "from kiapi_core import hookimpl\n")


def _record(host):
    return next(r for r in host.plugins if r.name == "compat")


@pytest.mark.parametrize("requires", [["kiapi-core>=99,<100"], ["kiapi-core<0.1"],
                                      ["pillow>=10", "kiapi_core[extra] >=5 ; python_version >= '3'"]])
def test_incompatible_plugin_is_skipped_unimported_with_a_reason(tmp_path, site, requires):
    import sys

    from kiapi_core import __version__
    from kiapi_core.testing import build_test_host

    _install(site, "kiapi-compat", requires)
    sys.modules.pop("kiapi_compat_imported", None)
    host = build_test_host(tmp_path, load_entrypoints=True, strict_plugins=False, load_plugins=["compat"])
    error = _record(host).error
    assert error.startswith("requires kiapi-core") and f"kiapi-core {__version__} is running" in error
    assert "kiapi_compat_imported" not in sys.modules  # skipped before import


def test_compatible_or_unconstrained_plugins_load(tmp_path, site):
    from kiapi_core.testing import build_test_host

    _install(site, "kiapi-compat", ["kiapi-core>=0.1,<1", "kiapi-core-extras>=99", "kiapi-core; extra == 'x'"])
    host = build_test_host(tmp_path, load_entrypoints=True, load_plugins=["compat"])
    assert _record(host).error is None


def test_incompatible_plugin_fails_strict_mode(tmp_path, site):
    from kiapi_core.errors import PluginError
    from kiapi_core.testing import build_test_host

    _install(site, "kiapi-compat", ["kiapi-core>=99"])
    with pytest.raises(PluginError, match="requires kiapi-core>=99"):
        build_test_host(tmp_path, load_entrypoints=True, load_plugins=["compat"])


async def test_incompatible_plugin_shows_in_health_and_cli(tmp_path, site):
    import json
    import os
    import subprocess
    import sys

    from kiapi_core.testing import build_test_host, client

    _install(site, "kiapi-compat", ["kiapi-core>=99,<100"])
    host = build_test_host(tmp_path, load_entrypoints=True, strict_plugins=False, load_plugins=["compat"])
    async with client(host) as http:
        health = (await http.get("/health")).json()
    assert any(e["distribution"] == "kiapi-compat" and "requires kiapi-core" in e["error"]
               for e in health["plugin_errors"])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "KIAPI_LOAD_PLUGINS": "compat", "KIAPI_DATA_DIR": str(tmp_path / "cli")}
    env.pop("KIAPI_STRICT_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "kiapi_core.cli", "plugins", "--json"], env=env,
                          capture_output=True, text=True, check=True)
    (record,) = json.loads(done.stdout)
    assert record["distribution"] == "kiapi-compat" and "requires kiapi-core>=99,<100" in record["error"]


def test_plugin_objects_are_checked_too():
    from kiapi_core import Capability, Model, hookimpl

    class Inline:
        @hookimpl
        def register_capabilities(self, register):
            register(Capability(name="inline", domain="Text", title="T", models=(Model(name="a"),)))

    problems = check_plugin(Inline())
    assert any("domain name 'Text' is not a valid URL path segment" in p for p in problems), problems


def test_invalid_names_are_reported(site):
    problems = check_plugin(_plugin(site, "contract_names", name="Café"))
    assert any("capability name 'Café' is not a valid URL path segment" in p for p in problems), problems


def test_clash_with_an_installed_capability_is_reported(site):
    # kiapi-ernie is installed in this workspace: a plugin registering "ernie" would lose to it.
    problems = check_plugin(_plugin(site, "contract_ernie_clash", name="ernie"))
    assert any("'ernie' is also registered by the installed kiapi-ernie" in p for p in problems), problems
