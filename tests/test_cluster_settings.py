"""Cluster settings on the command line and at start-up: secrets hidden, mistakes stop early,
and a host without KIAPI_CLUSTER_URL stays embedded."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from kiapi_core.cli import cli
from kiapi_core.errors import StartupError
from kiapi_core.host import build_host
from kiapi_core.jobs.manager import JobManager
from kiapi_core.settings import Settings


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("KIAPI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("KIAPI_CONFIG", raising=False)
    return lambda *args, env=None: CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_config_hides_the_database_password(run):
    env = {"KIAPI_CLUSTER_URL": "postgresql://kiapi:s3cret@db.local/kiapi", "KIAPI_LOAD_PLUGINS": ""}
    result = run("config", "--json", env=env)
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output
    assert json.loads(result.output)["settings"]["core"]["cluster_url"]["value"] == "postgresql://kiapi:***@db.local/kiapi"


def test_kiapi_cluster_needs_a_cluster_and_a_reachable_database(run):
    result = run("cluster", env={"KIAPI_CLUSTER_URL": ""})
    assert result.exit_code == 1 and "KIAPI_CLUSTER_URL" in result.output
    result = run("cluster", env={"KIAPI_CLUSTER_URL": "postgresql://nobody:pw@127.0.0.1:1/none"})
    assert result.exit_code == 1 and "cannot reach postgresql://nobody:***@127.0.0.1:1/none" in result.output


def test_start_up_mistakes(tmp_path):
    with pytest.raises(StartupError, match="KIAPI_ROLE=api needs a cluster"):
        build_host(Settings(data_dir=str(tmp_path), role="api", load_plugins=[]))
    with pytest.raises(StartupError, match="postgresql:// URL"):
        build_host(Settings(data_dir=str(tmp_path), cluster_url="mysql://x/y", load_plugins=[]))


def test_without_a_cluster_url_the_host_stays_embedded(tmp_path):
    host = build_host(Settings(data_dir=str(tmp_path), load_plugins=[]))
    assert isinstance(host.jobs, JobManager) and type(host.files).__name__ == "FileStore"
