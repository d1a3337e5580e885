"""``kiapi activate``: planning, disk-space refusal, downloads and Hub errors, all offline.

huggingface_hub's ``snapshot_download`` is replaced by :class:`FakeHub`, which answers dry runs
with real ``DryRunFileInfo`` records, "downloads" by writing the real cache layout, and raises
the real exception classes when told to.
"""

from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path
from typing import Any

import httpx
import huggingface_hub
import pytest
from click.testing import CliRunner
from huggingface_hub import errors
from huggingface_hub.file_download import DryRunFileInfo

from helpers_weights import (
    FLAT_FILES,
    FLAT_REPO,
    FLAT_REV,
    TOY,
    TOY_FILES,
    TOY_REPO,
    TOY_REV,
    build_snapshot,
    use_toy_plugin,
)
from kiapi_core.cli import cli
from kiapi_core.weights import matches, snapshot_dir

REPOS = {(TOY_REPO, TOY_REV): TOY_FILES, (FLAT_REPO, FLAT_REV): FLAT_FILES}


class FakeHub:
    """Stands in for ``huggingface_hub.snapshot_download``."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.error_on_download: BaseException | None = None

    def __call__(self, repo_id: str, *, revision: str | None = None, allow_patterns: Any = None,
                 cache_dir: Any = None, local_dir: Any = None, dry_run: bool = False, **_: Any) -> Any:
        self.calls.append({"repo": repo_id, "revision": revision, "patterns": allow_patterns,
                           "cache_dir": cache_dir, "local_dir": local_dir, "dry_run": dry_run})
        if self.error is not None:
            raise self.error
        files = {rel: data for rel, data in REPOS[(repo_id, revision)].items() if matches(rel, allow_patterns or ())}
        if dry_run:
            root = Path(local_dir) if local_dir else Path(cache_dir) / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revision
            return [DryRunFileInfo(commit_hash=revision, file_size=len(data), filename=rel, local_path=str(root / rel),
                                   is_cached=(root / rel).exists(), will_download=not (root / rel).exists())
                    for rel, data in files.items()]
        if self.error_on_download is not None:
            raise self.error_on_download
        if local_dir:
            for rel, data in files.items():
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(local_dir) / rel).write_bytes(data)
            return str(local_dir)
        return str(build_snapshot(Path(cache_dir), repo_id, revision, files, ref=None))

    @property
    def downloads(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if not c["dry_run"]]


@pytest.fixture
def env(tmp_path, monkeypatch):
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("KIAPI_DATA_DIR", str(tmp_path / "data"))
    use_toy_plugin(monkeypatch)
    return cache


@pytest.fixture
def hub(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return fake


def run(*args: str):
    return CliRunner().invoke(cli, ["activate", *args])


def http_error(cls: type, status: int, url: str = "https://huggingface.co/api/models/x") -> Exception:
    response = httpx.Response(status, request=httpx.Request("GET", url))
    return cls(f"{status} Client Error", response=response)


# -- planning --------------------------------------------------------------------------------
def test_dry_run_offline_plans_from_declarations(env):
    # HF_HUB_OFFLINE=1 (conftest): the real huggingface_hub refuses, the plan uses estimates.
    result = run("toy:small", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    (download,) = plan["downloads"]
    assert download["repo"] == TOY_REPO and download["revision"] == TOY_REV
    assert download["patterns"] == ["unet/*.safetensors", "unet/*.json", "tokenizer/**"]
    assert download["destination"] == "hf-cache" and download["path"] == str(env)
    assert download["estimate_bytes"] == 2000 and download["exact_bytes"] is None
    assert plan["exact"] is False and "HF_HUB_OFFLINE" in plan["notes"][0]


def test_the_estimate_subtracts_what_is_on_disk(env):
    build_snapshot(env, FLAT_REPO, FLAT_REV, {"shared.safetensors": FLAT_FILES["shared.safetensors"]})
    plan = json.loads(run("toy:a", "--dry-run", "--json").output)
    assert plan["downloads"][0]["estimate_bytes"] == 3000 - 700
    assert plan["todo"][0]["state"] == "partial"


def test_variants_of_one_repo_make_one_download_with_exact_sizes(env, hub):
    result = run("toy:a", "toy:b", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    (download,) = plan["downloads"]
    assert download["patterns"] == ["a.safetensors", "shared.safetensors", "b.safetensors"]
    assert download["models"] == ["toy:a", "toy:b"]
    assert download["exact_bytes"] == 2000 + 700 + 4000 and download["files"] == 3
    assert plan["exact"] is True and hub.downloads == []


def test_dry_run_text_names_repo_revision_patterns_and_total(env, hub):
    result = run("toy:small", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"{TOY_REPO} @ {TOY_REV[:12]}" in result.output
    assert "unet/*.safetensors" in result.output and "1.1 kB in 3 files" in result.output
    assert "Total to download: 1.1 kB" in result.output


def test_present_models_are_reported_not_fetched(env, hub):
    build_snapshot(env, TOY_REPO, TOY_REV, TOY_FILES)
    result = run("toy:small")
    assert result.exit_code == 0, result.output
    assert "toy:small: already present" in result.output and "nothing to download" in result.output
    assert hub.calls == []


def test_selectors_are_required_and_checked(env):
    result = run()
    assert result.exit_code == 2 and "valid selectors: toy, toy:small, toy:a, toy:b" in result.output
    result = run("toy:huge")
    assert result.exit_code == 2 and "no toy model 'huge'" in result.output and "toy:small" in result.output


# -- downloads -------------------------------------------------------------------------------
def test_activate_downloads_exactly_the_patterns(env, hub):
    result = run("toy:toy-small", "--yes")  # an alias
    assert result.exit_code == 0, result.output
    (call,) = hub.downloads
    assert call["patterns"] == ["unet/*.safetensors", "unet/*.json", "tokenizer/**"]
    assert call["cache_dir"] == str(env) and call["local_dir"] is None and call["revision"] == TOY_REV
    assert "toy:small: ready (1.1 kB)" in result.output
    snapshot = snapshot_dir(TOY.models[0].weights[0], env)
    assert snapshot is not None and not (snapshot / "extra").exists()
    again = run("toy:small")
    assert "already present" in again.output and len(hub.downloads) == 1


def test_activate_all_shares_one_download_per_repo(env, hub):
    result = run("--all", "--yes")
    assert result.exit_code == 0, result.output
    assert sorted(c["repo"] for c in hub.downloads) == [FLAT_REPO, TOY_REPO]
    for name in ("toy:small", "toy:a", "toy:b"):
        assert f"{name}: ready" in result.output


def test_activate_into_a_configured_local_directory(env, hub, tmp_path, monkeypatch):
    local = tmp_path / "weights" / "small"
    monkeypatch.setenv("KIAPI_TOY_SMALL_PATH", str(local))
    result = run("toy:small", "--yes")
    assert result.exit_code == 0, result.output
    assert hub.downloads[0]["local_dir"] == str(local) and hub.downloads[0]["cache_dir"] is None
    assert (local / "unet" / "model.safetensors").is_file()


def test_not_enough_disk_space_refuses_before_downloading(env, hub, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 500_000_000, 500_000_000))
    result = run("toy:small", "--yes")
    assert result.exit_code == 1
    assert "not enough disk space" in result.output and "1.1 kB" in result.output
    assert "1.0 GB headroom" in result.output and "500.0 MB is free" in result.output
    assert hub.downloads == []


def test_enough_disk_space_goes_ahead(env, hub, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**13, 0, 10**13))
    assert run("toy:small", "--yes").exit_code == 0 and len(hub.downloads) == 1


# -- errors ----------------------------------------------------------------------------------
def test_gated_repository(env, hub):
    hub.error = http_error(errors.GatedRepoError, 401)
    result = run("toy:small", "--yes")
    assert result.exit_code == 1
    assert f"{TOY_REPO} is a gated repository" in result.output
    assert f"https://huggingface.co/{TOY_REPO}" in result.output
    assert "hf auth login" in result.output and "HF_TOKEN" in result.output


def test_repository_not_found(env, hub):
    hub.error = http_error(errors.RepositoryNotFoundError, 404)
    result = run("toy:small", "--yes")
    assert result.exit_code == 1 and f"repository {TOY_REPO} was not found" in result.output


def test_offline_mode(env, hub):
    hub.error = errors.OfflineModeIsEnabled("offline mode is enabled")
    result = run("toy:small", "--yes")
    assert result.exit_code == 1 and "HF_HUB_OFFLINE is set" in result.output


def test_offline_mode_with_the_real_huggingface_hub(env):
    result = run("toy:small", "--yes")  # conftest sets HF_HUB_OFFLINE=1
    assert result.exit_code == 1 and "unset HF_HUB_OFFLINE" in result.output


def test_no_network(env, hub):
    hub.error = httpx.ConnectError("[Errno -2] Name or service not known")
    result = run("toy:small", "--yes")
    assert result.exit_code == 1 and "cannot reach the Hugging Face Hub" in result.output


def test_interrupted_download_says_how_to_resume(env, hub):
    hub.error_on_download = KeyboardInterrupt()
    result = run("toy:small", "--yes")
    assert result.exit_code == 130
    assert "run the same command again to resume" in result.output
