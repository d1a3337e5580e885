"""Facts about the two ERNIE-Image variants, shared by validation, loading and training.

Plain data only (no mlx/mflux import). Repo revisions are the ones mflux 0.24.0 pins in
``mflux/models/common/resolution/model_revisions.py``; download patterns are
``ErnieWeightDefinition.get_download_patterns()``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    repo: str
    revision: str
    #: mflux ``ModelConfig`` alias (``ModelConfig.from_name``) and training ``model`` value.
    mflux_name: str
    aliases: tuple[str, ...]
    steps: int
    guidance: float
    #: mflux training always uses ``ModelConfig.lora_training_steps/guidance`` (8/1.0, 50/4.0).
    train_steps: int
    train_guidance: float
    #: Guidance-distilled (tuned for guidance 1.0; mflux's CLI refuses others, its Python API
    #: runs CFG anyway, so the plugin accepts other values and warns).
    guidance_distilled: bool
    path_setting: str
    description: str


TURBO = Variant(
    name="turbo",
    repo="baidu/ERNIE-Image-Turbo",
    revision="bc68c81e2a1730a394d5fc9fae70713dee940140",
    mflux_name="ernie-image-turbo",
    aliases=("ernie-image-turbo", "baidu/ERNIE-Image-Turbo"),
    steps=8,
    guidance=1.0,
    train_steps=8,
    train_guidance=1.0,
    guidance_distilled=True,
    path_setting="turbo_path",
    description="baidu/ERNIE-Image-Turbo: fast, 8 steps, guidance 1.0 (the everyday choice).",
)
BASE = Variant(
    name="base",
    repo="baidu/ERNIE-Image",
    revision="5346b31d68c9c23758ba56ef8be5e9dc174c7f99",
    mflux_name="ernie-image",
    aliases=("ernie-image", "baidu/ERNIE-Image"),
    steps=50,
    guidance=4.0,
    train_steps=50,
    train_guidance=4.0,
    guidance_distilled=False,
    path_setting="base_path",
    description="baidu/ERNIE-Image: higher quality, slower: 50 steps, guidance 4.0 (CFG).",
)
VARIANTS: dict[str, Variant] = {v.name: v for v in (TURBO, BASE)}

#: What mflux downloads for a variant (``ErnieWeightDefinition.get_download_patterns``).
DOWNLOAD_PATTERNS: tuple[str, ...] = (
    "vae/*.safetensors",
    "vae/*.json",
    "transformer/*.safetensors",
    "transformer/*.json",
    "text_encoder/*.safetensors",
    "text_encoder/*.json",
    "tokenizer/**",
)



@dataclass(frozen=True)
class Arch:
    """The transformer dimensions a LoRA must fit (``ErnieTransformer`` constructor arguments)."""

    layers: int
    hidden: int
    ffn: int
    text_in: int
    out_channels: int


#: Both variants share the real architecture (mflux's ``ErnieTransformer`` defaults).
REAL_ARCH = Arch(layers=36, hidden=4096, ffn=12288, text_in=3072, out_channels=128)
#: The tiny demo model (``tiny.TX`` is built from these).
TINY_ARCH = Arch(layers=2, hidden=64, ffn=128, text_in=3072, out_channels=128)


def arch(demo: bool) -> Arch:
    return TINY_ARCH if demo else REAL_ARCH


def num_layers(demo: bool) -> int:
    return arch(demo).layers
