"""``kiapi deactivate``: exactly the variant's files go, shared and foreign files stay."""

from __future__ import annotations

import os
from pathlib import Path

from click.testing import CliRunner

import kiapi_core.cli.weights as weights_cli
from helpers_weights import (
    FLAT_FILES,
    FLAT_REPO,
    FLAT_REV,
    SEEDVR2,
    SEEDVR2_FILES,
    TOY_FILES,
    TOY_REPO,
    TOY_REV,
    build_snapshot,
    needs_plugins,
    use_toy_plugin,
)
from kiapi_core.cli import cli
from kiapi_core.weights import repo_cache_dir


def run(*args: str):
    return CliRunner().invoke(cli, ["deactivate", *args])


def blobs(cache: Path, repo: str) -> list[Path]:
    folder = repo_cache_dir(repo, cache) / "blobs"
    return sorted(folder.iterdir()) if folder.is_dir() else []


@needs_plugins
def test_removing_3b_keeps_the_vae_7b_needs(hf_cache):
    snapshot = build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    result = run("seedvr2:3b", "--yes")
    assert result.exit_code == 0, result.output
    assert "keeps ema_vae_fp16.safetensors (still needed by seedvr2:7b)" in result.output
    assert "freed 3.0 kB" in result.output
    assert sorted(p.name for p in snapshot.iterdir()) == ["ema_vae_fp16.safetensors", "seedvr2_ema_7b_fp16.safetensors"]
    assert len(blobs(hf_cache, SEEDVR2[0])) == 2
    status = CliRunner().invoke(cli, ["status", "--json"]).output
    assert '"model": "7b",\n      "state": "present"' in status


@needs_plugins
def test_removing_both_variants_removes_the_repo(hf_cache):
    build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    result = run("seedvr2", "--yes")
    assert result.exit_code == 0, result.output
    assert "freed 10.5 kB" in result.output
    assert not repo_cache_dir(SEEDVR2[0], hf_cache).exists()


@needs_plugins
def test_a_blob_another_revision_links_stays(hf_cache):
    build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    older = build_snapshot(hf_cache, SEEDVR2[0], "d" * 40, {"ema_vae_fp16.safetensors": SEEDVR2_FILES["ema_vae_fp16.safetensors"]}, ref=None)
    result = run("seedvr2", "--yes")
    assert result.exit_code == 0, result.output
    assert "freed 10.0 kB" in result.output  # the VAE blob is still linked by the other revision
    assert (older / "ema_vae_fp16.safetensors").stat().st_size == 500
    assert not (repo_cache_dir(SEEDVR2[0], hf_cache) / "snapshots" / SEEDVR2[1]).exists()
    assert not (repo_cache_dir(SEEDVR2[0], hf_cache) / "refs" / "main").exists()  # it named the removed revision


def test_unselected_files_of_a_snapshot_stay(hf_cache, monkeypatch):
    use_toy_plugin(monkeypatch)
    snapshot = build_snapshot(hf_cache, TOY_REPO, TOY_REV, TOY_FILES)
    result = run("toy:toy-small", "--yes")
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()) == ["extra/unused.bin"]
    assert len(blobs(hf_cache, TOY_REPO)) == 1
    assert "freed 1.1 kB" in result.output


def test_shared_file_goes_with_the_last_variant(hf_cache, monkeypatch):
    use_toy_plugin(monkeypatch)
    build_snapshot(hf_cache, FLAT_REPO, FLAT_REV, FLAT_FILES)
    assert "keeps shared.safetensors (still needed by toy:b)" in run("toy:a", "--yes").output
    result = run("toy:b", "--yes")
    assert result.exit_code == 0 and "freed 4.7 kB" in result.output
    assert not repo_cache_dir(FLAT_REPO, hf_cache).exists()


def test_a_configured_local_directory_is_never_deleted(hf_cache, monkeypatch, tmp_path):
    use_toy_plugin(monkeypatch)
    local = tmp_path / "mine"
    (local / "unet").mkdir(parents=True)
    (local / "unet" / "model.safetensors").write_bytes(b"u" * 10)
    monkeypatch.setenv("KIAPI_TOY_SMALL_PATH", str(local))
    result = run("toy:small", "--yes")
    assert result.exit_code == 0, result.output
    assert "a directory you manage" in result.output and "KIAPI_TOY_SMALL_PATH" in result.output
    assert (local / "unet" / "model.safetensors").exists()


@needs_plugins
def test_without_a_terminal_and_without_yes_it_refuses(hf_cache):
    snapshot = build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    result = run("seedvr2:3b")
    assert result.exit_code == 1 and "pass --yes" in result.output
    assert len(list(snapshot.iterdir())) == 3


@needs_plugins
def test_it_asks_on_a_terminal(hf_cache, monkeypatch):
    snapshot = build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    monkeypatch.setattr(weights_cli, "_interactive", lambda: True)
    declined = CliRunner().invoke(cli, ["deactivate", "seedvr2:7b"], input="n\n")
    assert declined.exit_code == 1 and "free 7.0 kB?" in declined.output
    assert len(list(snapshot.iterdir())) == 3
    accepted = CliRunner().invoke(cli, ["deactivate", "seedvr2:7b"], input="y\n")
    assert accepted.exit_code == 0 and "freed 7.0 kB" in accepted.output
    assert not (snapshot / "seedvr2_ema_7b_fp16.safetensors").exists()


@needs_plugins
def test_dry_run_and_nothing_to_delete(hf_cache):
    snapshot = build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    result = run("seedvr2:7b", "--dry-run")
    assert result.exit_code == 0 and "would free 7.0 kB" in result.output
    assert len(list(snapshot.iterdir())) == 3
    result = run("ernie", "--yes")
    assert result.exit_code == 0 and "ernie:turbo: nothing to delete" in result.output


@needs_plugins
def test_selectors_are_required(hf_cache):
    result = run()
    assert result.exit_code == 2 and "ernie:turbo" in result.output and "seedvr2:7b" in result.output


def test_blob_links_are_relative_like_huggingface_hub(hf_cache):
    snapshot = build_snapshot(hf_cache, *SEEDVR2, SEEDVR2_FILES)
    assert os.readlink(snapshot / "ema_vae_fp16.safetensors").startswith("../../blobs/")
