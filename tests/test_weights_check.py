"""``kiapi check`` through the real request path, and the data-directory lock it shares with serve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers_weights import TOY_FILES, TOY_REPO, TOY_REV, build_snapshot, use_toy_plugin
from kiapi_core.cli import cli
from kiapi_core.lockfile import DataDirLock, LockHeld, holder


@pytest.fixture
def env(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("KIAPI_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(cli, ["check", *args])


# -- lock ------------------------------------------------------------------------------------
def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire(owner="kiapi serve on 127.0.0.1:8000")
    assert "kiapi serve on 127.0.0.1:8000" in holder(tmp_path)
    with pytest.raises(LockHeld, match="in use by kiapi serve on 127.0.0.1:8000"):
        DataDirLock(tmp_path).acquire(owner="second")
    first.release()
    assert holder(tmp_path) is None
    with DataDirLock(tmp_path):
        assert holder(tmp_path) is not None


def test_a_second_server_on_the_same_data_dir_refuses(tmp_path):
    from kiapi_core.serve import serve
    from kiapi_core.testing.helpers import build_test_host

    host = build_test_host(tmp_path / "data")
    with DataDirLock(host.settings.data_path), pytest.raises(SystemExit, match="cannot start: .* is in use"):
        serve(host)


def test_check_refuses_while_a_server_holds_the_data_dir(env, monkeypatch):
    use_toy_plugin(monkeypatch)
    build_snapshot(env / "hf", TOY_REPO, TOY_REV, TOY_FILES)
    lock = DataDirLock(env / "data")
    lock.acquire(owner="kiapi serve on 127.0.0.1:8000")
    try:
        result = run("toy:small")
    finally:
        lock.release()
    assert result.exit_code == 1
    assert "in use by kiapi serve on 127.0.0.1:8000" in result.output
    assert "stop the server first" in result.output and "KIAPI_DATA_DIR" in result.output


# -- check with a toy capability (fast) -------------------------------------------------------
def test_check_runs_present_models_and_skips_missing_ones(env, monkeypatch):
    use_toy_plugin(monkeypatch)
    build_snapshot(env / "hf", TOY_REPO, TOY_REV, TOY_FILES)
    result = run("--json")
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in json.loads(result.output)}
    small = rows["toy:small"]
    assert small["outcome"] == "ok" and small["operation"] == "run" and small["run_s"] is not None
    assert small["job_id"]
    assert rows["toy:a"]["outcome"] == "skipped" and "kiapi activate toy:a" in rows["toy:a"]["detail"]
    assert not (env / "data" / "server.lock").read_text()  # released


def test_check_of_a_named_missing_model_fails(env, monkeypatch):
    use_toy_plugin(monkeypatch)
    result = run("toy:a")
    assert result.exit_code == 1
    assert "missing" in result.output and "kiapi activate toy:a" in result.output


def test_check_text_report(env, monkeypatch):
    use_toy_plugin(monkeypatch)
    build_snapshot(env / "hf", TOY_REPO, TOY_REV, TOY_FILES)
    result = run("toy:small")
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("toy:small"))
    assert " ok " in line and "load " in line and "run " in line and "peak memory" in line


def test_check_demo_runs_every_model(env, monkeypatch):
    use_toy_plugin(monkeypatch)  # no weights on disk: --demo checks them all anyway
    result = run("--demo", "--json")
    assert result.exit_code == 0, result.output
    assert [r["outcome"] for r in json.loads(result.output)] == ["ok", "ok", "ok"]


# -- the real plugins' tiny demo models (slow) -------------------------------------------------
@pytest.fixture
def plugin_smoke_tests():
    """The real plugins, which declare their own smoke tests."""
    for name in ("kiapi_ernie.capability", "kiapi_seedvr2.capability"):
        module = pytest.importorskip(name)
        assert module.build_capability(demo=True).smoke_test is not None


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["ernie:turbo", "seedvr2:3b"])
def test_check_demo_runs_the_plugins_tiny_models(env, plugin_smoke_tests, selector):
    result = run("--demo", "--json", selector)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output[result.output.index("["):])
    assert row["model"] == selector and row["outcome"] == "ok", row
    assert row["load_s"] is not None and row["run_s"] is not None
    assert row["memory_backend"] and row["peak_gb"] is not None
