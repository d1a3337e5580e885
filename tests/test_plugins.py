"""Plugin discovery and registration: robust loading, clashes, strict mode, provenance."""

import textwrap

import pytest

import kiapi_broken
import kiapi_echo
from kiapi_core import hookimpl as hookimpl_marker
from kiapi_core.errors import PluginError, StartupError
from kiapi_core.testing import build_test_host


def _install_fake_distribution(root, name, entry_points, modules):
    """Write a dist-info (METADATA + entry_points.txt) and modules into ``root`` (on sys.path)."""
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[kiapi]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    return site


def test_echo_plugin_registers_its_capability(tmp_path):
    host = build_test_host(tmp_path, plugins=[kiapi_echo])
    assert [c.name for c in host.registry] == ["echo"]
    record = next(r for r in host.plugins if r.name == "kiapi_echo")
    assert record.capabilities == ["echo"] and record.models == {"echo": ["small", "large"]}
    assert "register_capabilities" in record.hooks


def test_models_resolve_by_name_or_alias_in_any_case(tmp_path):
    registry = build_test_host(tmp_path, plugins=[kiapi_echo]).registry
    assert registry.resolve_model("echo", None).name == "small"
    assert registry.resolve_model("echo", "ECHO-LARGE").name == "large"
    assert registry.resolve_model("echo", "tiny").name == "small"
    with pytest.raises(Exception) as info:
        registry.resolve_model("echo", "huge")
    assert info.value.status == 400 and "small, large" in info.value.detail


def test_plugin_that_raises_on_import_is_reported_and_skipped(tmp_path, fake_site):
    _install_fake_distribution(fake_site, "kiapi-explodes", {"explodes": "kiapi_explodes_mod"},
                               {"kiapi_explodes_mod": "raise ImportError('no module named mlx_magic')"})
    host = build_test_host(tmp_path, plugins=[kiapi_echo], load_entrypoints=True, strict_plugins=False,
                           load_plugins=["explodes"])
    record = next(r for r in host.plugins if r.name == "explodes")
    assert record.distribution == "kiapi-explodes" and record.version == "1.2.3"
    assert "mlx_magic" in record.error
    assert [c.name for c in host.registry] == ["echo"]  # the others are still served


def test_plugin_that_raises_on_import_is_fatal_in_strict_mode(tmp_path, fake_site):
    _install_fake_distribution(fake_site, "kiapi-explodes", {"explodes": "kiapi_explodes_mod"},
                               {"kiapi_explodes_mod": "raise ImportError('no module named mlx_magic')"})
    with pytest.raises(PluginError, match="kiapi-explodes"):
        build_test_host(tmp_path, load_entrypoints=True, load_plugins=["explodes"])


def test_entry_point_plugin_is_loaded_with_its_distribution(tmp_path, fake_site):
    _install_fake_distribution(fake_site, "kiapi-echo-dist", {"echo": "kiapi_echo"}, {})
    host = build_test_host(tmp_path, load_entrypoints=True, load_plugins=["kiapi-echo-dist"])
    record = next(r for r in host.plugins if r.name == "echo")
    assert record.entry_point == "echo = kiapi_echo" and record.capabilities == ["echo"]
    assert host.registry.registered()[0].distribution == "kiapi-echo-dist"


def test_disabled_plugins_are_not_loaded(tmp_path, fake_site):
    _install_fake_distribution(fake_site, "kiapi-echo-dist", {"echo": "kiapi_echo"}, {})
    host = build_test_host(tmp_path, load_entrypoints=True, load_plugins=["echo"], disable_plugins=["echo"])
    assert len(host.registry) == 0


def test_clashing_alias_is_reported_and_others_still_served(tmp_path):
    clash = kiapi_broken.ClashingAliases()
    host = build_test_host(tmp_path, plugins=[kiapi_echo, clash], strict_plugins=False)
    record = next(r for r in host.plugins if r.name == "ClashingAliases")
    assert "'same'" in record.error.lower() and "'a'" in record.error and "'b'" in record.error
    assert [c.name for c in host.registry] == ["echo"]


def test_clashing_alias_is_fatal_in_strict_mode(tmp_path):
    with pytest.raises(PluginError, match="(?i)same"):
        build_test_host(tmp_path, plugins=[kiapi_broken.ClashingAliases()])


def test_duplicate_capability_names_both_distributions(tmp_path, fake_site):
    _install_fake_distribution(fake_site, "kiapi-echo-one", {"echo1": "kiapi_echo"}, {})
    _install_fake_distribution(fake_site, "kiapi-echo-two", {"echo2": "kiapi_echo_twin"},
                               {"kiapi_echo_twin": "from kiapi_broken import DuplicateEcho\n"
                                                   "register_capabilities = DuplicateEcho().register_capabilities\n"})
    host = build_test_host(tmp_path, load_entrypoints=True, strict_plugins=False,
                           load_plugins=["kiapi-echo-one", "kiapi-echo-two"])
    assert host.registry.registered()[0].distribution == "kiapi-echo-one"  # first by distribution name
    loser = next(r for r in host.plugins if r.name == "echo2")
    assert "kiapi-echo-one" in loser.error and "KIAPI_DISABLE_PLUGINS=echo1" in loser.error
    assert loser.capabilities == []
    with pytest.raises(PluginError, match="kiapi-echo-one") as info:
        build_test_host(tmp_path / "strict", load_entrypoints=True,
                        load_plugins=["kiapi-echo-one", "kiapi-echo-two"])
    assert "kiapi-echo-two" in str(info.value)


def test_misspelled_hook_is_detected(tmp_path):
    with pytest.raises(PluginError, match="register_capabilitys"):
        build_test_host(tmp_path, plugins=[kiapi_broken.Misspelled()])
    host = build_test_host(tmp_path, plugins=[kiapi_echo, kiapi_broken.Misspelled()], strict_plugins=False)
    assert "register_capabilitys" in next(r for r in host.plugins if r.name == "Misspelled").error
    assert [c.name for c in host.registry] == ["echo"]


def test_default_plugins_are_listed_as_such(tmp_path):
    host = build_test_host(tmp_path)
    defaults = [r for r in host.plugins if r.default]
    assert {r.name.rsplit(".", 1)[-1] for r in defaults} == {"health", "files", "jobs", "memory"}
    assert all(r.distribution == "kiapi-core" for r in defaults)


def test_plugin_setting_mistakes_stop_start_up_even_without_strict_mode(tmp_path):
    """An operator's typo in a plugin's settings must not quietly disable the plugin."""
    import msgspec

    from kiapi_core import Capability, Model, hookimpl
    from kiapi_core.errors import SettingsError
    from kiapi_core.host import build_host
    from kiapi_core.settings import Settings, load_settings

    class Knobs(msgspec.Struct, kw_only=True):
        level: int = 1

    class Configurable:
        @hookimpl
        def register_capabilities(self, register, host):
            register(Capability(name="knobs", domain="text", title="Knobs", models=(Model(name="m"),),
                                settings=Knobs))

    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[knobs]\nlevle = 2\n')
    with pytest.raises(SettingsError, match="levle"):
        build_host(load_settings(env={}, config_file=config), plugins=[Configurable()], load_entrypoints=False)
    config.write_text(f'data_dir = "{tmp_path}"\n')
    with pytest.raises(SettingsError, match="KIAPI_KNOBS_LEVEL = 'high'"):
        build_host(load_settings(env={"KIAPI_KNOBS_LEVEL": "high"}, config_file=config),
                   plugins=[Configurable()], load_entrypoints=False)
    host = build_host(load_settings(env={"KIAPI_KNOBS_LEVEL": "3"}, config_file=config),
                      plugins=[Configurable()], load_entrypoints=False)
    assert host.plugin_settings("knobs") == Knobs(level=3)
    assert Settings  # imported for the reader: core settings are checked the same way


def test_config_tables_naming_no_capability_are_reported(tmp_path, caplog):
    from kiapi_core.host import build_host
    from kiapi_core.settings import load_settings

    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n[ehco]\nx = 1\n')
    build_host(load_settings(env={}, config_file=config), plugins=[kiapi_echo], load_entrypoints=False)
    assert "[ehco] names no installed capability" in caplog.text and "echo" in caplog.text


def test_bad_warmup_entries_stop_start_up(tmp_path):
    with pytest.raises(StartupError, match="echo:small"):
        build_test_host(tmp_path, plugins=[kiapi_echo], warmup=["small"])


def test_editable_installs_show_their_distribution_and_version(tmp_path):
    import kiapi_ernie

    host = build_test_host(tmp_path, plugins=[kiapi_ernie])
    record = next(r for r in host.plugins if r.name == "kiapi_ernie")
    assert (record.distribution, record.version) == ("kiapi-ernie", kiapi_ernie.__version__)


def test_every_plugin_with_a_misspelled_hook_is_reported(tmp_path):
    class Other:
        @hookimpl_marker
        def register_route(self, host):  # the typo is the point
            return []

    host = build_test_host(tmp_path, plugins=[kiapi_echo, kiapi_broken.Misspelled(), Other()],
                           strict_plugins=False)
    errors = {r.name: r.error for r in host.plugins if r.error}
    assert "register_capabilitys" in errors["Misspelled"] and "register_route'" in errors["Other"]
    assert [c.name for c in host.registry] == ["echo"]



def test_entry_point_name_clash_keeps_the_first_and_disabling_it_serves_the_other(tmp_path, fake_site):
    _install_fake_distribution(fake_site, "kiapi-echo-a", {"echo": "kiapi_echo"}, {})
    _install_fake_distribution(fake_site, "kiapi-echo-b", {"echo": "kiapi_echo"}, {})
    host = build_test_host(tmp_path, load_entrypoints=True, strict_plugins=False,
                           load_plugins=["kiapi-echo-a", "kiapi-echo-b"])
    loser = next(r for r in host.plugins if r.distribution == "kiapi-echo-b")
    assert "kiapi-echo-a" in loser.error and "KIAPI_DISABLE_PLUGINS=kiapi-echo-a" in loser.error
    assert host.registry.registered()[0].distribution == "kiapi-echo-a"
    # Following the hint serves the other one, with no error left.
    host = build_test_host(tmp_path / "b", load_entrypoints=True, load_plugins=["kiapi-echo-a", "kiapi-echo-b"],
                           disable_plugins=["kiapi-echo-a"])
    assert host.registry.registered()[0].distribution == "kiapi-echo-b"
    assert not [r for r in host.plugins if r.error]


def test_diagnosis_records_a_plugin_settings_mistake_on_the_plugin(tmp_path):
    """`kiapi plugins` (diagnose=True) lists a settings mistake on its plugin instead of failing."""
    import msgspec

    from kiapi_core import Capability, Model, hookimpl
    from kiapi_core.errors import SettingsError
    from kiapi_core.host import build_host
    from kiapi_core.settings import load_settings

    class Knobs(msgspec.Struct, kw_only=True):
        level: int = 1

    class Configurable:
        @hookimpl
        def register_capabilities(self, register):
            register(Capability(name="knobs", domain="text", title="Knobs", models=(Model(name="m"),),
                                settings=Knobs))

    loaded = load_settings(env={"KIAPI_KNOBS_LEVEL": "high", "KIAPI_DATA_DIR": str(tmp_path),
                                "KIAPI_STRICT_PLUGINS": "1"}, config_file=None)
    with pytest.raises(SettingsError):
        build_host(loaded, plugins=[Configurable(), kiapi_echo], load_entrypoints=False)
    host = build_host(loaded, plugins=[Configurable(), kiapi_echo], load_entrypoints=False, diagnose=True)
    record = next(r for r in host.plugins if r.name == "Configurable")
    assert record.error.startswith("settings:") and "KIAPI_KNOBS_LEVEL" in record.error
    assert "echo" in host.registry


def test_a_second_plugin_cannot_take_over_another_plugins_command(tmp_path):
    import click

    from kiapi_core import hookimpl

    def plugin(label):
        class Commands:
            @hookimpl
            def register_commands(self, cli):
                @cli.command(name="hello")
                def hello():
                    click.echo(label)

        Commands.__name__ = f"Commands{label}"
        return Commands()

    host = build_test_host(tmp_path, plugins=[plugin("A"), plugin("B")], strict_plugins=False)
    assert host.plugin_commands["hello"].callback.__qualname__.endswith("hello")
    errors = {r.name: r.error for r in host.plugins if r.error}
    assert list(errors) == ["CommandsB"] and "'hello' (already" in errors["CommandsB"]
    with pytest.raises(PluginError, match="hello"):
        build_test_host(tmp_path / "strict", plugins=[plugin("A"), plugin("B")])
