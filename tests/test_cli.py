"""The kiapi command line."""

import importlib.util
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kiapi_core import __version__
from kiapi_core.cli import cli


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("KIAPI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KIAPI_CONFIG", raising=False)

    def invoke(*args, env=None):
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        return result

    return invoke


def test_version(run):
    result = run("--version")
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_every_command(run):
    output = run("--help").output
    for command in ("serve", "plugins", "models", "openapi", "config"):
        assert command in output


def test_config_shows_values_and_sources(run, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("max_queue = 7\n")
    result = run("--config", str(config), "config", "--json", env={"KIAPI_SYNC_TIMEOUT_S": "12", "KIAPI_LOAD_PLUGINS": ""})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)["settings"]["core"]
    assert data["max_queue"] == {"value": 7, "source": f"config file {config}", "env": "KIAPI_MAX_QUEUE"}
    assert data["sync_timeout_s"]["source"] == "env KIAPI_SYNC_TIMEOUT_S"
    assert data["port"]["source"] == "default"


def test_config_hides_the_auth_token(run):
    result = run("config", env={"KIAPI_AUTH_TOKEN": "s3cret", "KIAPI_LOAD_PLUGINS": ""})
    assert "s3cret" not in result.output and "***" in result.output


def test_bad_config_is_a_clean_error(run, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text("prot = 1\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "plugins"])
    assert result.exit_code != 0 and "unknown setting" in result.output


def test_openapi_of_unknown_family_is_an_error(run):
    result = CliRunner().invoke(cli, ["openapi", "nope"], env={"KIAPI_LOAD_PLUGINS": ""})
    assert result.exit_code != 0 and "no capability 'nope'" in result.output


def test_root_openapi_prints_json(run):
    result = run("openapi", env={"KIAPI_LOAD_PLUGINS": ""})
    assert json.loads(result.output)["openapi"].startswith("3.1")


@pytest.mark.skipif(importlib.util.find_spec("kiapi_ernie") is None or importlib.util.find_spec("kiapi_seedvr2") is None,
                    reason="the workspace plugins are not installed (core-only environment)")
def test_plugins_lists_the_workspace_plugins(tmp_path):
    env = {"KIAPI_DATA_DIR": str(tmp_path), "PATH": "", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "kiapi_core.cli", "plugins", "--json"], capture_output=True,
                         text=True, env=env, check=True).stdout
    records = {r["distribution"]: r for r in json.loads(out)}
    assert records["kiapi-ernie"]["capabilities"] == ["ernie"] and records["kiapi-ernie"]["error"] is None
    assert records["kiapi-ernie"]["models"] == {"ernie": ["turbo", "base"]}
    assert records["kiapi-seedvr2"]["models"] == {"seedvr2": ["3b", "7b"]}
    assert records["kiapi-ernie"]["entry_point"] == "ernie = kiapi_ernie"


def test_serve_on_a_port_in_use_is_a_one_line_error():
    import socket

    from kiapi_core.serve import _listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"127.0.0.1:{port} is already in use"):
            _listen("127.0.0.1", port)
    free = _listen("127.0.0.1", 0)  # port 0: any free port, which the server then logs
    assert free.getsockname()[1] > 0
    free.close()


def test_plugins_notes_selection_names_that_match_nothing(run):
    result = run("plugins", env={"KIAPI_LOAD_PLUGINS": "nope"})
    assert "selects none" in result.output and "no installed plugin is called 'nope'" in result.output


def test_models_for_a_budget_answer_will_it_run_on_my_mac(run):
    """`kiapi models --budget-gb 10.67` (a 16 GB Mac): ERNIE gets q5 resident weights, its 1024^2
    jobs fit and 2048^2 does not; the JSON form carries the same figures."""
    result = run("models", "--budget-gb", "10.67", "--json", env={"KIAPI_LOAD_PLUGINS": "ernie"})
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    turbo = next(m for m in data["models"] if (m["family"], m["model"]) == ("ernie", "turbo"))
    assert turbo["resident_quantize"] == 5 and turbo["chosen_by"] == "memory budget 10.67 GiB"
    fits = {r["label"]: r["fits"] for r in turbo["requests"]}
    assert fits["generate 1024x1024"] and fits["generate 1024x1024 + LoRA"] and not fits["generate 2048x2048"]
    text = run("models", "--budget-gb", "64", env={"KIAPI_LOAD_PLUGINS": "ernie"}).output
    assert "ernie:turbo  resident q8" in text and "chosen by memory budget 64.00 GiB" in text
    listed = run("models", env={"KIAPI_LOAD_PLUGINS": "ernie", "KIAPI_ERNIE_RESIDENT_QUANTIZE": "4"}).output
    assert "ernie:turbo (default)  resident q4 (6.2 GiB, chosen by KIAPI_ERNIE_RESIDENT_QUANTIZE)" in listed
