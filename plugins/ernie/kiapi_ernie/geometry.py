"""Real-geometry ERNIE-Image for tests: real widths, one transformer block, published layout.

Real weights are 23 GB and out of reach in CI, yet what breaks at real size (quantized widths,
key mappings, memory per block) depends on the **widths**, not on the depth. This builds
ERNIE-Image with every real width (transformer hidden 4096 / 32 heads / ffn 12288, Mistral-3
text encoder hidden 3072 / 32 q and 8 kv heads / mlp 9216, Flux2 VAE channels 128..512) but one
transformer block, two text-encoder layers and a 512-token vocabulary, random weights, and
writes it in the **published diffusers layout** of ``baidu/ERNIE-Image-Turbo``: transformer and
VAE keys as diffusers names them (mflux's ``ErnieWeightMapping`` maps them back, conv weights
OIHW), the text encoder as a Mistral-3 checkpoint whose vision tower, projector and LM head
mflux's ``language_model.model.`` filter must drop. ~1.4 GB on disk; built in a few seconds.

:func:`geometry_construct` swaps ``ErnieImageInitializer._init_models`` (as ``tiny`` does) so
mflux's real initializer builds these shapes; everything else is mflux's own code.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TX = dict(num_layers=1)  # every other ErnieTransformer argument at its real default
TE = dict(vocab_size=512, num_hidden_layers=2)  # real widths; ERNIE reads the 2nd-to-last layer
_SWAP_LOCK = threading.RLock()
MARKER = "KIAPI_REAL_GEOMETRY"


def _init_models(model, model_config) -> None:
    from mflux.models.ernie_image.model.ernie_text_encoder.text_encoder import ErnieMistralTextEncoder
    from mflux.models.ernie_image.model.ernie_transformer.transformer import ErnieTransformer
    from mflux.models.flux2.model.flux2_vae.vae import Flux2VAE

    model.vae = Flux2VAE()
    model.transformer = ErnieTransformer(**{**dict(model_config.transformer_overrides or {}), **TX})
    model.text_encoder = ErnieMistralTextEncoder(**TE)


@contextlib.contextmanager
def geometry_construct() -> Iterator[None]:
    """Every ERNIE model constructed inside the block has the real-geometry shapes."""
    from mflux.models.ernie_image.ernie_image_initializer import ErnieImageInitializer

    with _SWAP_LOCK:
        original = ErnieImageInitializer.__dict__["_init_models"]
        ErnieImageInitializer._init_models = staticmethod(_init_models)
        try:
            yield
        finally:
            ErnieImageInitializer._init_models = original


def _pattern(to_pattern: str) -> re.Pattern[str]:
    regex, seen = "", set()
    for literal, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", to_pattern):
        regex += re.escape(literal)
        if name:
            regex += f"(?P={name})" if name in seen else f"(?P<{name}>\\d+)"
            seen.add(name)
    return re.compile(regex + "$")


def to_published(flat: dict[str, Any], mapping: list[Any]) -> dict[str, Any]:
    """mflux parameters (module paths) -> the published names, inverting ``mapping``: the
    first ``from_pattern`` of the target whose ``to_pattern`` matches, conv weights back to
    OIHW. Raises when a parameter has no target (the mapping would not load it)."""
    compiled = [(_pattern(t.to_pattern), t) for t in mapping]
    out: dict[str, Any] = {}
    for key, value in flat.items():
        for regex, target in compiled:
            match = regex.match(key)
            if match is None:
                continue
            name = target.from_pattern[0]
            for placeholder, number in match.groupdict().items():
                name = name.replace("{" + placeholder + "}", number)
            if target.transform is not None and value.ndim == 4:
                value = value.transpose(0, 3, 1, 2)  # mflux OHWI -> published OIHW
            out[name] = value
            break
        else:
            raise KeyError(f"no published name maps to {key}")
    return out


def fill(shape: tuple[int, ...], scale: float = 0.02):
    """Random bf16 values of ``shape``, cheaply: 61 random rows tiled along the first axis
    (MLX's CPU random generator needs ~13 s for one real-width block's 218 M values)."""
    import mlx.core as mx

    rows = min(shape[0], 61)
    block = mx.random.normal((rows, *shape[1:]), dtype=mx.bfloat16) * scale
    reps = -(-shape[0] // rows)
    return mx.tile(block, (reps,) + (1,) * (len(shape) - 1))[: shape[0]]


def random_like(module) -> None:
    """Replace every matrix / kernel of ``module`` with :func:`fill` values and cast the rest to
    bf16 (norm scales stay ones: activations keep a sane range through the block)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    flat: list[tuple[str, Any]] = tree_flatten(module.parameters())  # type: ignore[assignment]
    module.update(tree_unflatten([(k, fill(v.shape) if v.ndim >= 2 else v.astype(mx.bfloat16)) for k, v in flat]))


def write_dir(root: Path, *, seed: int = 0) -> Path:
    """Write the real-geometry model under ``root`` in the published layout; returns ``root``."""
    import mlx.core as mx
    from mflux.models.ernie_image.model.ernie_text_encoder.text_encoder import ErnieMistralTextEncoder
    from mflux.models.ernie_image.model.ernie_transformer.transformer import ErnieTransformer
    from mflux.models.ernie_image.weights.ernie_weight_mapping import ErnieWeightMapping
    from mflux.models.flux2.model.flux2_vae.vae import Flux2VAE
    from mlx.utils import tree_flatten

    from .tiny import _make_tokenizer

    if (root / MARKER).is_file():
        return root
    mx.random.seed(seed)
    parts = {
        "transformer": (ErnieTransformer(**TX), ErnieWeightMapping.get_transformer_mapping()),
        "vae": (Flux2VAE(), ErnieWeightMapping.get_vae_mapping()),
        "text_encoder": (ErnieMistralTextEncoder(**TE), None),
    }
    for name, (module, mapping) in parts.items():
        random_like(module)
        flat = dict(tree_flatten(module.parameters()))
        weights = to_published(flat, mapping) if mapping is not None else dict(flat)
        if name == "text_encoder":  # what the published Mistral-3 checkpoint also holds, and mflux drops
            weights["language_model.lm_head.weight"] = mx.zeros((TE["vocab_size"], 3072), dtype=mx.bfloat16)
            weights["vision_tower.transformer.layers.0.attention.q_proj.weight"] = mx.zeros((8, 8), dtype=mx.bfloat16)
            weights["multi_modal_projector.linear_1.weight"] = mx.zeros((8, 8), dtype=mx.bfloat16)
        (root / name).mkdir(parents=True, exist_ok=True)
        mx.eval(list(weights.values()))
        mx.save_safetensors(str(root / name / "diffusion_pytorch_model.safetensors"), weights)
        del weights, flat, module
    _make_tokenizer(root / "tokenizer")
    (root / MARKER).write_text("real-geometry random-weight ERNIE-Image, diffusers layout\n")
    return root


def build(root: Path, *, quantize: int | None):
    """``ErnieImage`` loaded from :func:`write_dir`'s directory by mflux's real loader."""
    from mflux.models.common.config import ModelConfig
    from mflux.models.ernie_image import ErnieImage

    with geometry_construct():
        model = ErnieImage(quantize=quantize, model_path=str(root), model_config=ModelConfig.ernie_image_turbo())
    if model.transformer.hidden_size != 4096 or len(model.transformer.layers) != TX["num_layers"]:
        raise RuntimeError("the real-geometry ERNIE did not come out at real width")
    return model
