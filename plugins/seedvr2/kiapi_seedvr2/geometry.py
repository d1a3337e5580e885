"""Real-geometry SeedVR2 for tests: real widths, two DiT blocks, the published ComfyUI layout.

The DiT keeps every real width of its variant (3b: 2560 wide, 20 heads of 128, swiglu x4) and
the VAE its real channels; only the depth shrinks to two blocks, one multimodal (separate video
and text weights) and one shared, so both kinds of block load and quantize. Weights are random
and written as ``numz/SeedVR2_comfyUI`` publishes them (``seedvr2_ema_3b_fp16.safetensors`` +
``ema_vae_fp16.safetensors``, fp16, torch layout) by inverting mflux's mapping, the same way
:mod:`kiapi_seedvr2.tiny` does for the demo models.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEPTH = {"num_layers": 2, "mm_layers": 1}
_swap_lock = threading.Lock()


def _init_models(model: Any, model_config: Any) -> None:
    from mflux.models.seedvr2.model.seedvr2_transformer.transformer import SeedVR2Transformer
    from mflux.models.seedvr2.model.seedvr2_vae.vae import SeedVR2VAE

    model.vae = SeedVR2VAE()
    model.transformer = SeedVR2Transformer(**{**dict(model_config.transformer_overrides or {}), **DEPTH})


@contextlib.contextmanager
def geometry_construction() -> Iterator[None]:
    """SeedVR2 instances built inside the block have the real-geometry shapes."""
    from mflux.models.seedvr2.seedvr2_initializer import SeedVR2Initializer

    with _swap_lock:
        original = SeedVR2Initializer.__dict__["_init_models"]
        SeedVR2Initializer._init_models = staticmethod(_init_models)
        try:
            yield
        finally:
            SeedVR2Initializer._init_models = original


def _fill(shape: tuple[int, ...]):
    import mlx.core as mx

    rows = min(shape[0], 61)
    block = mx.random.normal((rows, *shape[1:]), dtype=mx.float16) * 0.02
    return mx.tile(block, (-(-shape[0] // rows),) + (1,) * (len(shape) - 1))[: shape[0]]


def write_dir(root: Path, variant: str = "3b") -> Path:
    """Write the real-geometry ``variant`` under ``root`` in the published layout."""
    import mlx.core as mx
    from mflux.models.seedvr2.weights.seedvr2_weight_definition import SeedVR2WeightDefinition
    from mlx.utils import tree_flatten, tree_unflatten

    from .tiny import _to_hf, model_config_for

    root.mkdir(parents=True, exist_ok=True)
    model_config = model_config_for(variant)
    definition = SeedVR2WeightDefinition.resolve(model_config)
    mx.random.seed(0)
    holder = type("GeometryHolder", (), {})()
    _init_models(holder, model_config)
    for component in definition.get_components():
        module = getattr(holder, component.name)
        flat: list[tuple[str, Any]] = tree_flatten(module.parameters())  # type: ignore[assignment]
        module.update(tree_unflatten([(k, _fill(v.shape) if v.ndim >= 2 else v.astype(mx.float16)) for k, v in flat]))
        mx.eval(module.parameters())
        mx.save_safetensors(str(root / component.weight_files[0]), _to_hf(module, component))
    return root


def build(root: Path, variant: str = "3b", *, quantize: int | None):
    """``SeedVR2`` loaded from :func:`write_dir`'s directory by mflux's real loader."""
    from mflux.models.seedvr2 import SeedVR2

    from .tiny import model_config_for

    with geometry_construction():
        model = SeedVR2(quantize=quantize, model_path=str(root), model_config=model_config_for(variant))
    if len(model.transformer.blocks) != DEPTH["num_layers"]:
        raise RuntimeError("the real-geometry SeedVR2 did not come out with two blocks")
    return model
