"""Settings of the seedvr2 capability.

Read by the core from ``KIAPI_SEEDVR2_<FIELD>`` environment variables and the ``[seedvr2]`` table
of the config file; handlers get the instance as ``job.settings``, ``prepare``/``check`` through
``ctx.settings``. The string under each field is its documentation
(``kiapi config`` shows it).
"""

from __future__ import annotations

import msgspec

#: The quantization the resident instance of each variant uses.
RESIDENT_QUANTIZE = 8


class Seedvr2Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the seedvr2 plugin (``KIAPI_SEEDVR2_*``)."""

    path_3b: str | None = None
    "Local directory with the 3b weights (seedvr2_ema_3b_fp16.safetensors + ema_vae_fp16.safetensors, or an mflux-saved 3b); unset: the Hugging Face cache."
    path_7b: str | None = None
    "Local directory with the 7b weights (seedvr2_ema_7b_fp16.safetensors + ema_vae_fp16.safetensors, or an mflux-saved 7b); unset: the Hugging Face cache."
    max_output_pixels: int | None = None
    "Largest output image, in pixels; unset: no fixed cap, the memory budget decides (a request that can never fit gets 503 with the numbers). Larger requests get 422."
    max_scale: float = 4.0
    "Largest scale factor accepted in `resolution` (\"4x\")."
    min_resolution: int = 16
    "Smallest short side of the output, in pixels (integer targets and scale-factor results)."
    max_resolution: int = 2048
    "Largest integer shortest-edge target accepted in `resolution`."

    def __post_init__(self) -> None:
        if self.max_output_pixels is not None and self.max_output_pixels < 256:
            raise ValueError("max_output_pixels must be at least 256 (16x16)")
        if not self.max_scale > 0:
            raise ValueError("max_scale must be > 0")
        if not 16 <= self.min_resolution <= self.max_resolution:
            raise ValueError("need 16 <= min_resolution <= max_resolution")


DEFAULT_SETTINGS = Seedvr2Settings()

