"""The seedvr2 Capability declaration: variants, weights, memory and the upscale operation.

``build_capability(demo=...)`` is what the plugin registers. Importing this module never imports
mlx or mflux (the handler and loader are ``"module:function"`` strings resolved on first use).

Memory (GB here means GiB, 2**30 bytes, as the core counts memory; disk sizes are decimal GB)
--------------------------------------------------
``weights_gib`` per quantization: the DiT's parameters (3.3 G for 3b, 7.0 G for 7b; the published
fp16 files are ~6.8 and ~16.5 GB) at ``bits + 0.5`` bits each (MLX affine quantization stores an
fp16 scale and bias per group of 64), more because quantizing gives the weights the two streams
share their own copies (x 1.12, measured at real width), plus the fp16 VAE (~0.5 GB, mostly convolutions, which mflux never
quantizes). Unquantized: 2 bytes per parameter.

:func:`estimate_upscale` (what one request adds on top of the resident weights) is mostly a
function of the **output** size, because mflux resizes the input to the output size before
encoding, and the causal conv3d VAE intermediates dominate; the input only matters while it is
decoded and resized (``SeedVR2Util.preprocess_image``)::

    gb = base + tile_gb_per_mpx * min(P, 0.262144) + gb_per_mpx * P + INPUT_GB_PER_MPX * I

with ``P`` the padded output and ``I`` the (EXIF-oriented) input in megapixels. mflux tiles the
VAE encode and decode in 512x512 px tiles (``TilingConfig``), so the conv3d term saturates at one
tile (0.262144 MP); the whole-image terms (the DiT over all latent tokens, and the float32 numpy
copies of the image made by the tiler and the LAB/wavelet colour correction) stay linear.
The input term is Pillow memory, the same for every variant and in demo mode: the decoded
image (3-4 bytes per pixel), the copy ``convert("RGB")``/EXIF transposition make, and the
resize's source access, ~12 bytes per input pixel (0.012 GB/MP), so a 100 MP input asked for a
16 px output is admitted on ~1.2 GB, not on its output size alone. The decoded input is freed
before the encode starts, so adding the terms is on the safe side.

Where the numbers come from:

* Tiny models on the MLX CPU backend (this repo's tests, measured with ``mx.get_peak_memory``
  after ``mx.reset_peak_memory``): 10.4-12.1 KiB of MLX memory per output pixel for a VAE with
  32 channels at full resolution, linear from 32x32 to 128x128 outputs (32x32: 14.8 MB,
  64x64: 42 MB, 96x96: 95 MB, 128x128: 166-174 MB). Hence ``tile_gb_per_mpx = 11`` in demo.
* The real VAE has 128 channels at full resolution (4x the tiny one), so on the CPU backend the
  real model's conv3d term is scaled to ``4 * 11 = 44`` GB/MP (derived, not measured; real
  weights on the CPU backend are impractically slow anyway).
* On Metal the earlier kiapi measured 3b q8: "256->512 first-run peak ~3929 MiB" (weights
  included) and "cached 256->768 peak ~1756 MiB"; reading the latter as the per-request part
  gives ~1.84 GB at 0.59 MP, which ``base 0.5 + 3.0 * 0.262 + 1.0 * 0.59 = 1.88`` covers.
  The 7b shares the VAE; its DiT is wider (3072 vs 2560), hence larger ``base``/``gb_per_mpx``.
* The whole-image term: ~0.5 GB/MP of numpy float32 copies (not counted by MLX, counted by the
  process) plus the DiT activations.

The core corrects these raw estimates with the peaks it measures (``kiapi_core.memory``), so
they only need to be right in shape and on the safe side for request sizes not yet seen.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from kiapi_core.sdk import QUANTIZE_LEVELS, SAMPLE_IMAGE, Capability, Model, Operation, RequestContext, WeightFiles

from . import docs
from .schemas import ImageResponse, UpscaleParams, UpscaleRequest
from .settings import RESIDENT_QUANTIZE, Seedvr2Settings
from .validation import check_upscale, padded_size, prepare_upscale

REPO = "numz/SeedVR2_comfyUI"
#: The revision mflux 0.24.0 pins (``mflux.models.common.resolution.model_revisions``); a test
#: keeps the two in step.
REVISION = "09ced71023636e9bc8cdf9cdecfb2625d1e691e8"
VAE_FILE = "ema_vae_fp16.safetensors"
#: What ``mflux-save`` writes for SeedVR2 (component folders of shards), also accepted locally.
MFLUX_SAVED = ("transformer/*.safetensors", "vae/*.safetensors")
TILE_MPX = 512 * 512 / 1e6
#: Output size assumed when the estimate runs without ``check`` having sized the output.
FALLBACK_SIZE = (2048, 2048)

_VARIANTS: dict[str, dict[str, Any]] = {
    "3b": {
        "aliases": ("seedvr2-3b", "seedvr2"),
        "default": True,
        "description": "SeedVR2 3B: faster and lighter; a good general upscaler.",
        "dit_params_g": 3.3,
        "disk_gb": 7.3,
        "metal": {"base_gb": 0.5, "tile_gb_per_mpx": 3.0, "gb_per_mpx": 1.0},
        "cpu": {"base_gb": 0.5, "tile_gb_per_mpx": 44.0, "gb_per_mpx": 1.0},
    },
    "7b": {
        "aliases": ("seedvr2-7b",),
        "default": False,
        "description": "SeedVR2 7B: higher quality at a higher memory and time cost.",
        "dit_params_g": 7.0,
        "disk_gb": 17.0,
        "metal": {"base_gb": 1.0, "tile_gb_per_mpx": 3.0, "gb_per_mpx": 1.2},
        "cpu": {"base_gb": 1.0, "tile_gb_per_mpx": 44.0, "gb_per_mpx": 1.2},
    },
}
#: Tiny demo models (CPU measurements above); the weights are a few MB.
_DEMO_ESTIMATE = {"base_gb": 0.05, "tile_gb_per_mpx": 11.0, "gb_per_mpx": 0.6}
#: Decoding and resizing the input (Pillow), per input megapixel; see the module docstring.
INPUT_GB_PER_MPX = 0.012
_VAE_GB = 0.5


#: Quantized, the DiT holds ~10 % more than its parameter count says: mflux's quantization
#: gives the attention weights SeedVR2 shares between its two streams their own quantized copies
#: (q8 3b holds ~4.4 GB, not 4.0; measured 1.11-1.12x at real width, tests/test_seedvr2_real_geometry.py).
_QUANTIZED_SHARING = 1.12


def weights_gib(dit_params_g: float) -> dict[int | None, float]:
    table: dict[int | None, float] = {None: round(dit_params_g * 2 + _VAE_GB, 1)}
    for bits in QUANTIZE_LEVELS:
        table[bits] = round(dit_params_g * _QUANTIZED_SHARING * (bits + 0.5) / 8 + _VAE_GB, 1)
    return table


def dit_file(variant: str) -> str:
    return f"seedvr2_ema_{variant}_fp16.safetensors"


def _model(variant: str, demo: bool) -> Model:
    spec = _VARIANTS[variant]
    files = (dit_file(variant), VAE_FILE)
    backend = "metal" if sys.platform == "darwin" else "cpu"
    estimate = _DEMO_ESTIMATE if demo else spec[backend]
    return Model(
        name=variant,
        aliases=spec["aliases"],
        default=spec["default"],
        features=("image", "upscale"),
        description=spec["description"] + (" Demo mode: tiny random weights, outputs are noise." if demo else ""),
        loader="kiapi_seedvr2.runtime:load",
        resident_quantize=RESIDENT_QUANTIZE,
        weights_gib={q: 0.01 for q in (None, *QUANTIZE_LEVELS)} if demo else weights_gib(spec["dit_params_g"]),
        weights=() if demo else (
            WeightFiles(repo=REPO, revision=REVISION, patterns=files, size_gib=spec["disk_gb"] * 10**9 / 2**30,
                        local_dir_setting=f"path_{variant}",
                        local_alternatives=(MFLUX_SAVED,)),
        ),
        info={"variant": variant, "files": files, "estimate": dict(estimate), "demo": demo},
    )


def estimate_upscale(params: UpscaleParams, ctx: RequestContext) -> float:
    """Peak GB one upscale adds on top of the resident weights (see the module docstring)."""
    return estimate_upscale_gb(params, ctx.model)


def estimate_upscale_gb(params: UpscaleParams, model: Model) -> float:
    """Peak GB one upscale with ``params`` adds on top of ``model``'s resident weights.

    Reads the input and output sizes that :func:`~kiapi_seedvr2.validation.check_upscale` put
    into ``params``; without them, assumes a 2048x2048 output from an input as large.
    """
    width, height = params.width, params.height
    if not width or not height:
        width, height = FALLBACK_SIZE
    in_w, in_h = params.input_width or width, params.input_height or height
    pw, ph = padded_size(int(width), int(height))
    mpx = pw * ph / 1e6
    input_mpx = int(in_w) * int(in_h) / 1e6
    k = model.info.get("estimate") or _VARIANTS["3b"]["metal"]
    return round(k["base_gb"] + k["tile_gb_per_mpx"] * min(mpx, TILE_MPX) + k["gb_per_mpx"] * mpx
                 + INPUT_GB_PER_MPX * input_mpx, 3)


def smoke_test(model: Model, demo: bool = False) -> tuple[str, dict[str, Any]]:
    """The smallest real request, run by ``kiapi check``: a 2x upscale of a generated gradient
    (64 px; 32 px in demo, since MLX CPU 3D convolutions are slow)."""
    import base64
    import io

    from PIL import Image

    size = 32 if demo else 64
    image = Image.new("RGB", (size, size))
    image.putdata([(x * 255 // size, y * 255 // size, 128) for y in range(size) for x in range(size)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return "upscale", {"model": model.name, "image": {"type": "data_url", "data_url": data_url},
                       "resolution": "2x", "seed": 1}


def memory_examples(model: Model) -> list[tuple[str, str, dict[str, Any]]]:
    """Typical upscales with their sized params, for ``kiapi models --budget-gb``."""
    def sized(w: int, h: int) -> dict[str, Any]:
        params = UpscaleParams(model=model.name, resolution="2x", softness=0.0, seed=0, quantize=None, format="png",
                               quality=90, image={"type": "file_id", "file_id": "example"},
                               input_width=w, input_height=h, width=2 * w, height=2 * h)
        return msgspec.to_builtins(params)

    return [(f"upscale {w}x{h} -> {2 * w}x{2 * h}", "upscale", sized(w, h))
            for w, h in ((512, 512), (1024, 1024), (1920, 1080))]


def build_capability(*, demo: bool = False) -> Capability:
    """The seedvr2 capability; ``demo`` swaps in the tiny random-weight models."""
    return Capability(
        name="seedvr2",
        domain="image",
        title=docs.TITLE,
        summary=docs.SUMMARY,
        description=docs.DESCRIPTION,
        models=(_model("3b", demo), _model("7b", demo)),
        operations=(
            Operation(
                name="upscale",
                request=UpscaleRequest,
                result=ImageResponse,
                handler="kiapi_seedvr2.handlers:upscale",
                job_type="seedvr2",
                prepare=prepare_upscale,
                params=UpscaleParams,
                inputs={"image": "image"},
                check=check_upscale,
                estimate=estimate_upscale,
                produces=("image/png", "image/jpeg", "image/webp"),
                summary=docs.UPSCALE_SUMMARY,
                operation_id=docs.UPSCALE_OPERATION_ID,
                description=docs.UPSCALE_DESCRIPTION,
                example={"image": SAMPLE_IMAGE, "resolution": "2x", "seed": 42},
            ),
        ),
        settings=Seedvr2Settings,
        smoke_test=smoke_test,
        memory_examples=memory_examples,
    )
