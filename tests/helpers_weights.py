"""Helpers for the weights tests: a Hugging Face cache built on disk, and a toy capability.

``build_snapshot`` writes the real huggingface_hub layout (content-addressed ``blobs/``,
``snapshots/<rev>/<path>`` relative symlinks into them, ``refs/main``), so the code under test
reads exactly what a real download leaves behind. ``TOY`` is a capability with weights in two
repos, a SeedVR2-like shared file and a local-directory setting; its handler needs no model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kiapi_core import Capability, Model, Operation, WeightFiles, hookimpl
from kiapi_core.weights import repo_cache_dir

#: Tests that read the real plugins' declarations (the core's tests also run without plugins).
needs_plugins = pytest.mark.skipif(
    importlib.util.find_spec("kiapi_ernie") is None or importlib.util.find_spec("kiapi_seedvr2") is None,
    reason="kiapi-ernie and kiapi-seedvr2 are not installed")

ERNIE_TURBO = ("baidu/ERNIE-Image-Turbo", "bc68c81e2a1730a394d5fc9fae70713dee940140")
SEEDVR2 = ("numz/SeedVR2_comfyUI", "09ced71023636e9bc8cdf9cdecfb2625d1e691e8")
TOY_REPO, TOY_REV = "toy-org/Toy-Image", "a" * 40
FLAT_REPO, FLAT_REV = "toy-org/Toy-Flat", "b" * 40


def build_snapshot(cache: Path, repo: str, revision: str, files: dict[str, bytes], *, ref: str | None = "main") -> Path:
    """Write ``files`` as huggingface_hub would cache them; returns the snapshot directory."""
    repo_dir = repo_cache_dir(repo, cache)
    snapshot = repo_dir / "snapshots" / revision
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        digest = hashlib.sha256(data).hexdigest()
        blob = repo_dir / "blobs" / digest
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref:
        (repo_dir / "refs").mkdir(exist_ok=True)
        (repo_dir / "refs" / ref).write_text(revision)
    return snapshot


ERNIE_FILES: dict[str, bytes] = {
    "transformer/config.json": b'{"num_layers": 2}',
    "transformer/diffusion_pytorch_model.safetensors.index.json":
        b'{"weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors",'
        b' "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}',
    "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": b"T1" * 500,
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": b"T2" * 500,
    "vae/config.json": b"{}",
    "vae/diffusion_pytorch_model.safetensors": b"V" * 300,
    "text_encoder/config.json": b"{}",
    "text_encoder/model.safetensors": b"E" * 400,
    "tokenizer/tokenizer.json": b"{}",
    "tokenizer/tokenizer_config.json": b"{}",
    "README.md": b"not selected by the patterns",
}

SEEDVR2_FILES: dict[str, bytes] = {
    "seedvr2_ema_3b_fp16.safetensors": b"3" * 3000,
    "seedvr2_ema_7b_fp16.safetensors": b"7" * 7000,
    "ema_vae_fp16.safetensors": b"v" * 500,
}


# -- a toy capability with weights -----------------------------------------------------------
class ToySettings(msgspec.Struct, frozen=True, kw_only=True):
    small_path: str | None = None


class ToyRequest(msgspec.Struct, kw_only=True):
    text: str = "hi"
    model: str | None = None
    mode: str = "sync"


def toy_handler(job: Any) -> dict[str, Any]:
    job.progress(0.5, "thinking")
    return {"text": job.request.text.upper()}


def toy_smoke(model: Model) -> tuple[str, dict[str, Any]]:
    return "run", {"text": f"smoke {model.name}"}


def _toy_model(name: str, *, default: bool = False, aliases: tuple[str, ...] = (),
               weights: tuple[WeightFiles, ...]) -> Model:
    return Model(name=name, default=default, aliases=aliases, weights=weights,
                 weights_gib={None: 0.001}, resident_quantize=None)


TOY = Capability(
    name="toy", domain="image", title="Toy", summary="A test capability with weight files.",
    models=(
        _toy_model("small", default=True, aliases=("toy-small",), weights=(
            WeightFiles(repo=TOY_REPO, revision=TOY_REV, patterns=("unet/*.safetensors", "unet/*.json", "tokenizer/**"),
                        size_gib=2000 / 2**30, local_dir_setting="small_path"),
        )),
        _toy_model("a", weights=(
            WeightFiles(repo=FLAT_REPO, revision=FLAT_REV, patterns=("a.safetensors", "shared.safetensors"),
                        size_gib=3000 / 2**30),
        )),
        _toy_model("b", weights=(
            WeightFiles(repo=FLAT_REPO, revision=FLAT_REV, patterns=("b.safetensors", "shared.safetensors"),
                        size_gib=5000 / 2**30),
        )),
    ),
    operations=(Operation(name="run", request=ToyRequest, result=None, handler=toy_handler, job_type="toy"),),
    settings=ToySettings,
    smoke_test=toy_smoke,
)

TOY_FILES: dict[str, bytes] = {
    "unet/config.json": b"{}",
    "unet/model.safetensors": b"U" * 1000,
    "tokenizer/vocab/merges.txt": b"m" * 100,
    "extra/unused.bin": b"x" * 10,
}
FLAT_FILES: dict[str, bytes] = {
    "a.safetensors": b"a" * 2000,
    "b.safetensors": b"b" * 4000,
    "shared.safetensors": b"s" * 700,
}


class ToyPlugin:
    """A plugin object registering :data:`TOY` (for ``build_host(plugins=[...])``)."""

    @hookimpl
    def register_capabilities(self, register: Any) -> None:
        register(TOY)


def use_toy_plugin(monkeypatch: Any) -> None:
    """Make every host the CLI builds load only the toy plugin (no entry points)."""
    import kiapi_core.host as host_module

    real = host_module.build_host

    def build(settings: Any = None, **_ignored: Any) -> Any:
        return real(settings, plugins=[ToyPlugin()], load_entrypoints=False)

    monkeypatch.setattr(host_module, "build_host", build)
