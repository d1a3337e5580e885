"""Settings precedence (defaults < config file < environment < flags) and provenance."""

import msgspec
import pytest

from kiapi_core.errors import StartupError
from kiapi_core.settings import Settings, describe, load_settings


def test_precedence_and_sources(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('port = 7000\nmax_queue = 3\nhost = "0.0.0.0"\n[ernie]\nedit_require_square = false\n')
    env = {"KIAPI_PORT": "7100", "KIAPI_MAX_QUEUE": "4"}
    loaded = load_settings({"port": 7200}, env=env, config_file=config)
    assert loaded.settings.port == 7200 and loaded.sources["port"] == "command line"
    assert loaded.settings.max_queue == 4 and loaded.sources["max_queue"] == "env KIAPI_MAX_QUEUE"
    assert loaded.settings.host == "0.0.0.0" and loaded.sources["host"].startswith("config file")
    assert loaded.sources["demo"] == "default"


def test_env_values_are_converted():
    env = {"KIAPI_DEMO": "yes", "KIAPI_WARMUP": "ernie:turbo, seedvr2:3b", "KIAPI_MEMORY_LIMIT_GB": "12.5",
           "KIAPI_AUTH_TOKEN": "", "KIAPI_DISABLE_PLUGINS": ""}
    settings = load_settings(env=env).settings
    assert settings.demo is True
    assert settings.warmup == ["ernie:turbo", "seedvr2:3b"]
    assert settings.memory_limit_gb == 12.5
    assert settings.auth_token is None
    assert settings.disable_plugins == []


def test_kiapi_config_env_names_the_file(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("max_jobs = 9\n")
    assert load_settings(env={"KIAPI_CONFIG": str(config)}).settings.max_jobs == 9


@pytest.mark.parametrize(
    ("env", "config", "message"),
    [
        ({"KIAPI_PORT": "eighty"}, None, "invalid setting KIAPI_PORT = 'eighty' .from env KIAPI_PORT."),
        ({"KIAPI_MAX_QUEUE": "0"}, None, "KIAPI_MAX_QUEUE = '0' .* >= 1"),
        ({"KIAPI_SYNC_TIMEOUT_S": "-5"}, None, "KIAPI_SYNC_TIMEOUT_S"),
        ({}, "log_level = \"loud\"\n", "KIAPI_LOG_LEVEL = 'loud' .from config file"),
        ({}, "prot = 1\n", r"unknown setting\(s\) prot"),
        ({}, "port = \n", "not valid TOML"),
    ],
)
def test_bad_settings_are_explained(tmp_path, env, config, message):
    path = None
    if config is not None:
        path = tmp_path / "c.toml"
        path.write_text(config)
    with pytest.raises(StartupError, match=message):
        load_settings(env=env, config_file=path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(StartupError, match="does not exist"):
        load_settings(env={}, config_file=tmp_path / "nope.toml")


def test_plugin_settings_are_namespaced(tmp_path):
    class ErnieLike(msgspec.Struct, kw_only=True):
        edit_require_square: bool = True
        turbo_path: str | None = None
        max_loras: int = 4

    config = tmp_path / "c.toml"
    config.write_text("[ernie]\nmax_loras = 2\n")
    loaded = load_settings(env={"KIAPI_ERNIE_EDIT_REQUIRE_SQUARE": "0"}, config_file=config)
    value, sources = loaded.plugin("ernie", ErnieLike)
    assert value == ErnieLike(edit_require_square=False, turbo_path=None, max_loras=2)
    assert sources["edit_require_square"] == "env KIAPI_ERNIE_EDIT_REQUIRE_SQUARE"
    assert sources["max_loras"] == "config file [ernie]"


def test_every_setting_is_documented():
    docs = describe(Settings)
    missing = [f.name for f in msgspec.structs.fields(Settings) if not docs.get(f.name)]
    assert missing == []
