"""``weights.status`` and ``kiapi status``: present / partial / missing, sizes, places, offline."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from helpers_weights import (
    ERNIE_FILES,
    ERNIE_TURBO,
    FLAT_FILES,
    FLAT_REPO,
    FLAT_REV,
    SEEDVR2,
    SEEDVR2_FILES,
    TOY,
    TOY_FILES,
    TOY_REPO,
    TOY_REV,
    ToySettings,
    build_snapshot,
    needs_plugins,
    use_toy_plugin,
)
from kiapi_core.cli import cli
from kiapi_core.weights import SelectionError, mlx_note, select, status


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def model(name: str):
    return next(m for m in TOY.models if m.name == name)


def test_missing_when_the_cache_is_empty(hf_cache):
    found = status(TOY, model("small"), ToySettings())
    assert found.state == "missing" and found.size_bytes == 0
    assert found.expected_bytes == 2000
    assert found.activate == "kiapi activate toy:small"
    assert found.missing == [f"{TOY_REPO}: not downloaded"]
    assert found.location.endswith(f"snapshots/{TOY_REV}")


def test_present_counts_the_blobs_behind_the_links(hf_cache):
    build_snapshot(hf_cache, TOY_REPO, TOY_REV, TOY_FILES)
    found = status(TOY, model("small"), ToySettings())
    assert found.state == "present", found.missing
    assert found.size_bytes == 2 + 1000 + 100  # extra/unused.bin is not selected
    assert found.source == "hf-cache" and found.parts[0].files == 3


def test_partial_when_a_pattern_matches_nothing(hf_cache):
    files = {k: v for k, v in TOY_FILES.items() if not k.startswith("tokenizer/")}
    build_snapshot(hf_cache, TOY_REPO, TOY_REV, files)
    found = status(TOY, model("small"), ToySettings())
    assert found.state == "partial" and found.missing == [f"{TOY_REPO}: tokenizer/**"]


def test_partial_on_a_broken_blob_link(hf_cache):
    snapshot = build_snapshot(hf_cache, TOY_REPO, TOY_REV, TOY_FILES)
    (snapshot / "unet/model.safetensors").resolve().unlink()
    found = status(TOY, model("small"), ToySettings())
    assert found.state == "partial"
    assert any("broken link" in m for m in found.missing)


def test_only_the_pinned_revision_counts(hf_cache):
    build_snapshot(hf_cache, TOY_REPO, "c" * 40, TOY_FILES)
    found = status(TOY, model("small"), ToySettings())
    assert found.state == "missing"
    assert found.notes and "cccccccc" in found.notes[0] and "pinned" in found.notes[0]


def test_a_configured_local_directory_wins(hf_cache, tmp_path):
    local = tmp_path / "mine"
    for rel, data in TOY_FILES.items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    found = status(TOY, model("small"), ToySettings(small_path=str(local)))
    assert found.state == "present" and found.source == "local" and found.location == str(local)
    assert found.parts[0].setting == "KIAPI_TOY_SMALL_PATH"
    missing = status(TOY, model("small"), ToySettings(small_path=str(tmp_path / "absent")))
    assert missing.state == "missing" and "KIAPI_TOY_SMALL_PATH" in missing.missing[0]


def test_shared_files_count_for_each_variant(hf_cache):
    build_snapshot(hf_cache, FLAT_REPO, FLAT_REV, {k: v for k, v in FLAT_FILES.items() if k != "b.safetensors"})
    assert status(TOY, model("a"), None).state == "present"
    b = status(TOY, model("b"), None)
    assert b.state == "partial" and b.size_bytes == 700


def test_selectors_resolve_families_models_and_aliases():
    assert [m.name for _, m in select([TOY], ["toy"])] == ["small", "a", "b"]
    assert [m.name for _, m in select([TOY], ["TOY:Toy-Small", "toy:small", "toy:b"])] == ["small", "b"]
    with pytest.raises(SelectionError, match="valid selectors: toy, toy:small, toy:a, toy:b"):
        select([TOY], ["toy:huge"])
    with pytest.raises(SelectionError, match="no capability 'nope'"):
        select([TOY], ["nope"])


def test_mlx_note_never_imports_mlx():
    assert mlx_note(platform="darwin", machine="x86_64").startswith("MLX needs Apple silicon")
    assert "not installed" in mlx_note(platform="darwin", machine="arm64", find_spec=lambda name: None)
    assert mlx_note(platform="darwin", machine="arm64", find_spec=lambda name: object()) is None


# -- the real plugins' layouts -------------------------------------------------------------
@needs_plugins
def test_status_on_an_empty_cache_lists_every_model_as_missing(hf_cache):
    result = run("status")
    assert result.exit_code == 0, result.output
    for name in ("ernie:turbo", "ernie:base", "seedvr2:3b", "seedvr2:7b"):
        assert f"kiapi activate {name}" in result.output
    assert "23.2 GB" in result.output and "7.3 GB" in result.output and "17.0 GB" in result.output
    rows = [ln for ln in result.output.splitlines() if ln.startswith(("ernie:", "seedvr2:"))]
    assert len(rows) == 4 and all(" missing " in row for row in rows)


@needs_plugins
def test_status_json_with_real_layouts(hf_cache):
    build_snapshot(hf_cache, *ERNIE_TURBO, ERNIE_FILES)
    build_snapshot(hf_cache, *SEEDVR2, {k: v for k, v in SEEDVR2_FILES.items() if "7b" not in k})
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    states = {f"{m['family']}:{m['model']}": m for m in data["models"]}
    assert states["ernie:turbo"]["state"] == "present"
    assert states["ernie:turbo"]["size_bytes"] == sum(len(v) for k, v in ERNIE_FILES.items() if k != "README.md")
    assert states["ernie:base"]["state"] == "missing"
    assert states["seedvr2:3b"]["state"] == "present" and states["seedvr2:3b"]["size_bytes"] == 3500
    assert states["seedvr2:7b"]["state"] == "partial"
    assert states["seedvr2:7b"]["missing"] == [f"{SEEDVR2[0]}: seedvr2_ema_7b_fp16.safetensors"]
    assert data["hf_cache"] == str(hf_cache)
    assert "mlx" in data


@needs_plugins
def test_a_missing_shard_named_by_the_index_makes_it_partial(hf_cache):
    files = {k: v for k, v in ERNIE_FILES.items() if "00002-of" not in k}
    build_snapshot(hf_cache, *ERNIE_TURBO, files)
    data = json.loads(run("status", "--json").output)
    turbo = next(m for m in data["models"] if m["model"] == "turbo")
    assert turbo["state"] == "partial"
    assert turbo["missing"] == [f"{ERNIE_TURBO[0]}: transformer/diffusion_pytorch_model-00002-of-00002.safetensors"]


def test_status_with_no_plugins(hf_cache, monkeypatch):
    monkeypatch.setenv("KIAPI_LOAD_PLUGINS", "[]")
    result = run("status")
    assert result.exit_code == 0 and "no capability plugins are installed" in result.output
    assert json.loads(run("status", "--json").output)["models"] == []


def test_status_table_with_the_toy_plugin(hf_cache, monkeypatch):
    use_toy_plugin(monkeypatch)
    build_snapshot(hf_cache, TOY_REPO, TOY_REV, TOY_FILES)
    result = run("status")
    assert result.exit_code == 0, result.output
    line = next(ln for ln in result.output.splitlines() if ln.startswith("toy:small"))
    assert "toy-small" in line and "present" in line and "1.1 kB" in line and "HF cache" in line
    assert "kiapi activate toy:small" not in result.output and "kiapi activate toy:a" in result.output


def test_status_does_not_import_heavy_modules(hf_cache):
    import subprocess

    code = ("import sys; from click.testing import CliRunner; from kiapi_core.cli import cli; "
            "r = CliRunner().invoke(cli, ['status']); assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('mlx.core', 'mflux', 'huggingface_hub') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_hf_cache_dir_follows_huggingface_hub(monkeypatch, tmp_path):
    from kiapi_core.weights import hf_cache_dir

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hf_cache_dir() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))  # huggingface_hub still reads it
    assert hf_cache_dir() == tmp_path / "legacy"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "new"))
    assert hf_cache_dir() == tmp_path / "new"
