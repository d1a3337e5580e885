"""Tiny random-weight SeedVR2 models for ``--demo`` and the tests.

They run through mflux's real code: the weight files are written in the published
``numz/SeedVR2_comfyUI`` layout (``seedvr2_ema_{3b,7b}_fp16.safetensors`` +
``ema_vae_fp16.safetensors``, fp16, torch tensor layout) by inverting mflux's own
``SeedVR2WeightMapping``, so loading exercises the real ``WeightLoader``, mapping, quantizer, VAE,
DiT, scheduler and colour correction. Outputs are noise.

mflux builds the VAE with hard-coded full-size channels, so the one thing we must change is
``SeedVR2Initializer._init_models`` (a static method the initializer looks up on the class).
:func:`tiny_construction` swaps it in only while a model is being built, under a module lock,
and restores it in ``finally``; real models built at other times are unaffected. Without the
swap, mflux would silently keep full-size lazily initialised layers next to the tiny weights
(``update(strict=False)``) and try to allocate the whole 3B model, so :func:`check_tiny`
asserts the sizes after loading.

Recipe (from docs notes, Appendix B): VAE channels (32, 32, 32, 32); DiT 64 wide, 2 heads of 32,
2 blocks with ``mm_layers=1`` (block 0 has separate video/text weights, block 1 shared ones, so
both code paths run), rope_dim 32; ``txt_in_dim`` stays 5120 because mflux ships a fixed
58 x 5120 text embedding. The 3B/7B architecture flags come from the variant's ModelConfig.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Bump when the recipe changes, so cached fixtures are rebuilt.
RECIPE_VERSION = 1
VAE_CHANNELS = (32, 32, 32, 32)
TRANSFORMER = {"vid_dim": 64, "heads": 2, "head_dim": 32, "num_layers": 2, "mm_layers": 1, "rope_dim": 32,
               "txt_in_dim": 5120}

_swap_lock = threading.Lock()
_build_lock = threading.Lock()


def _tiny_init_models(model: Any, model_config: Any) -> None:
    from mflux.models.seedvr2.model.seedvr2_transformer.transformer import SeedVR2Transformer
    from mflux.models.seedvr2.model.seedvr2_vae.vae import SeedVR2VAE

    model.vae = SeedVR2VAE(block_out_channels=VAE_CHANNELS)
    overrides = dict(model_config.transformer_overrides or {})  # never mutate the shared config
    overrides.update(TRANSFORMER)
    model.transformer = SeedVR2Transformer(**overrides)


@contextlib.contextmanager
def tiny_construction() -> Iterator[None]:
    """Build SeedVR2 instances with tiny modules inside this block (one builder at a time)."""
    from mflux.models.seedvr2.seedvr2_initializer import SeedVR2Initializer

    with _swap_lock:
        original = SeedVR2Initializer.__dict__["_init_models"]
        SeedVR2Initializer._init_models = staticmethod(_tiny_init_models)
        try:
            yield
        finally:
            SeedVR2Initializer._init_models = original


def check_tiny(model: Any) -> None:
    """Fail loudly if a tiny checkpoint was loaded into full-size modules."""
    transformer = model.transformer
    if transformer.vid_dim != TRANSFORMER["vid_dim"] or len(transformer.blocks) != TRANSFORMER["num_layers"]:
        raise RuntimeError("tiny SeedVR2 weights were loaded into full-size modules; the tiny swap did not apply")


def model_config_for(variant: str) -> Any:
    from mflux.models.common.config import ModelConfig

    if variant == "7b":
        return ModelConfig.seedvr2_7b()
    if variant == "3b":
        return ModelConfig.seedvr2_3b()
    raise ValueError(f"unknown SeedVR2 variant {variant!r}")


def _to_hf(module: Any, component: Any) -> dict[str, Any]:
    """Invert mflux's declarative mapping: MLX parameter paths -> published (torch) keys."""
    from mflux.models.common.weights.mapping.weight_mapper import WeightMapper
    from mflux.models.common.weights.mapping.weight_transforms import WeightTransforms
    from mlx.utils import tree_flatten

    inverse: dict[str, tuple[str, Any]] = {}
    flat = WeightMapper._build_flat_mapping(component.mapping_getter(), component.num_blocks or 0, 0)
    for hf_key, targets in flat.items():
        for mlx_path, transform in targets:
            inverse.setdefault(mlx_path, (hf_key, transform))
    out, unmapped = {}, []
    parameters: list[tuple[str, Any]] = tree_flatten(module.parameters())  # type: ignore[assignment]
    for path, value in parameters:
        if path not in inverse:
            unmapped.append(path)
            continue
        hf_key, transform = inverse[path]
        if transform is None:
            pass
        elif transform in (WeightTransforms.transpose_conv3d_weight, WeightTransforms.transpose_patch_embed) \
                and value.ndim == 5:
            value = value.transpose(0, 4, 1, 2, 3)  # MLX O,D,H,W,I -> torch O,I,D,H,W
        elif transform is WeightTransforms.transpose_conv2d_weight and value.ndim == 4:
            value = value.transpose(0, 3, 1, 2)  # MLX O,H,W,I -> torch O,I,H,W
        else:
            raise NotImplementedError(f"no inverse for {getattr(transform, '__name__', transform)} at {path}")
        out[hf_key] = value
    if unmapped:
        raise ValueError(f"{len(unmapped)} tiny SeedVR2 parameters have no published name, e.g. {unmapped[:3]}")
    return out


def write_tiny_weights(root: Path, variant: str, seed: int = 0) -> Path:
    """Write a tiny checkpoint for ``variant`` into ``root`` (which must exist)."""
    import mlx.core as mx
    from mflux.models.seedvr2.weights.seedvr2_weight_definition import SeedVR2WeightDefinition

    model_config = model_config_for(variant)
    definition = SeedVR2WeightDefinition.resolve(model_config)
    mx.random.seed(seed)
    holder = type("TinyHolder", (), {})()
    _tiny_init_models(holder, model_config)
    for component in definition.get_components():
        module = getattr(holder, component.name)
        module.set_dtype(mx.float16)  # the published files are fp16
        mx.eval(module.parameters())
        mx.save_safetensors(str(root / component.weight_files[0]), _to_hf(module, component))
    return root


def ensure_tiny_weights(cache_dir: Path, variant: str) -> Path:
    """The tiny checkpoint directory for ``variant`` under ``cache_dir``, built once.

    Built in a temporary sibling directory and renamed into place, so a crash or a concurrent
    builder never leaves a half-written checkpoint behind.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / f"tiny-seedvr2-{variant}-v{RECIPE_VERSION}"
    if target.is_dir():
        return target
    with _build_lock:
        if target.is_dir():
            return target
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=cache_dir))
        try:
            write_tiny_weights(tmp, variant)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():  # another process won the race; otherwise a real failure
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
