"""Request validation and output sizing for ``POST /v1/image/seedvr2/upscale``.

Two steps, both before the job is queued:

* :func:`prepare_upscale` (event loop, cheap): checks every field (the SDK's ``Problems``,
  ``resolve_seed`` and ``resolve_quantize``, so both plugins share one seed range and message)
  and returns the resolved parameters recorded on the job (an :class:`UpscaleParams`): ``model``, ``resolution`` (``768`` or
  ``"2x"``, normalised), ``softness``, ``seed`` (drawn when omitted), ``quantize`` (the resident
  one when omitted), ``format``, ``quality``, ``image`` (the core's ``ref_summary``: never inline
  data or URL secrets), ``image_file_id`` when the image is a Files-API id, and in demo mode
  ``demo``/``note``.
* :func:`check_upscale` (worker thread, after the image is stored): reads the input size,
  computes the output size exactly as mflux will, rejects outputs over the pixel cap, and returns
  new params with ``input_width``, ``input_height``, ``width``, ``height`` and the stored input's
  ``image_file_id`` (from ``ctx.file_ids``), which is how the
  memory estimate (:func:`kiapi_seedvr2.capability.estimate_upscale`) learns the output size.

Accepted ``resolution`` forms (lenient on purpose, earlier kiapi rejected ``"2X"``):
an integer ``16..2048`` (``max_resolution``), the same integer as a string (``"768"``), or a
scale factor ``"<N>x"`` with ``0 < N <= 4.0`` (``max_scale``), ``N`` an integer or decimal,
``x`` in either case, surrounding blanks ignored (``"2x"``, ``"1.5X"``, ``" 2 x "``).
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from kiapi_core.sdk import InvalidRequest, Problems, RequestContext, ref_summary, resolve_quantize, resolve_seed

from .schemas import UpscaleParams, UpscaleRequest
from .settings import DEFAULT_SETTINGS, Seedvr2Settings

#: mflux floors a scaled short side to a multiple of this (``DIMENSION_STEP_PIXELS``).
STEP = 16
FORMATS = ("png", "jpeg", "webp")

_SCALE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*[xX]\s*$")
_INTEGER = re.compile(r"^\s*\+?\d+\s*$")


def resolution_forms(settings: Seedvr2Settings) -> str:
    return (
        f"an integer shortest-edge target {settings.min_resolution}..{settings.max_resolution} "
        f"(e.g. 768 or \"768\"), or a scale factor \"<N>x\" with 0 < N <= {settings.max_scale} "
        "(e.g. \"2x\", \"1.5x\")"
    )


def parse_resolution(value: Any, settings: Seedvr2Settings) -> int | str:
    """The normalised resolution: an ``int`` target or a ``"<N>x"`` string; 422 otherwise."""
    forms = resolution_forms(settings)
    if isinstance(value, bool):
        raise InvalidRequest(f"resolution must be {forms}; got {value!r}", field="resolution")
    if isinstance(value, str):
        if _INTEGER.match(value):
            value = int(value)
        else:
            match = _SCALE.match(value)
            if not match:
                raise InvalidRequest(f"resolution must be {forms}; got {value!r}", field="resolution")
            factor = float(match.group(1))
            if not (0 < factor <= settings.max_scale):
                raise InvalidRequest(
                    f"resolution scale factor must be > 0 and at most {settings.max_scale}x; got {value!r}. "
                    f"Accepted: {forms}",
                    field="resolution",
                )
            return f"{int(factor)}x" if factor.is_integer() else f"{factor!r}x"
    if isinstance(value, int):
        if not settings.min_resolution <= value <= settings.max_resolution:
            raise InvalidRequest(
                f"resolution {value} is out of range; use {forms}", field="resolution"
            )
        return value
    raise InvalidRequest(f"resolution must be {forms}; got {value!r}", field="resolution")


def scale_factor(resolution: int | str) -> float | None:
    """The factor of a ``"<N>x"`` resolution, ``None`` for an integer target."""
    if isinstance(resolution, str):
        return float(resolution[:-1])
    return None


def target_short_side(short: int, resolution: int | str) -> int:
    """The short side mflux aims for (``ScaleFactor.get_scaled_value``: floored to 16)."""
    factor = scale_factor(resolution)
    if factor is None:
        return int(resolution)
    value = _as_mflux_number(factor) * short
    return int(value - value % STEP)


def output_size(width: int, height: int, resolution: int | str) -> tuple[int, int]:
    """The output size mflux produces for a ``width`` x ``height`` input (EXIF-oriented).

    Mirrors ``SeedVR2Util.preprocess_image`` of mflux 0.24.0 operation by operation: the short
    side goes to the target, both sides scale by ``target / short`` and are truncated, then
    floored to even numbers. The long side is not rounded to 16; the model pads internally.
    """
    short = min(width, height)
    target = target_short_side(short, resolution)
    scale = target / short
    return (int(width * scale) // 2) * 2, (int(height * scale) // 2) * 2


def padded_size(width: int, height: int) -> tuple[int, int]:
    """The size the VAE and DiT actually process (mflux pads both sides to multiples of 16)."""
    return width + (-width) % STEP, height + (-height) % STEP


def _as_mflux_number(factor: float) -> int | float:
    # ScaleFactor.parse keeps whole numbers as int; the product is the same either way, but
    # keep the types identical so the arithmetic matches bit for bit.
    return int(factor) if factor.is_integer() else factor


def _settings(ctx: RequestContext) -> Seedvr2Settings:
    return ctx.settings if isinstance(ctx.settings, Seedvr2Settings) else DEFAULT_SETTINGS


def prepare_upscale(request: UpscaleRequest, ctx: RequestContext) -> UpscaleParams:
    """Validate an UpscaleRequest and resolve its parameters (one 422 listing every problem)."""
    settings = _settings(ctx)
    p = Problems()
    resolution: int | str = 0
    try:
        resolution = parse_resolution(request.resolution, settings)
    except InvalidRequest as exc:
        p.add("resolution", exc.detail)

    softness = request.softness
    if isinstance(softness, bool) or not isinstance(softness, (int, float)) or not math.isfinite(softness) \
            or not 0.0 <= softness <= 1.0:
        p.add("softness", f"softness must be a number from 0 to 1 (0 = sharpest); got {softness!r}")
    quantize = resolve_quantize(request.quantize, ctx.model.resident_quantize, p)
    if request.format not in FORMATS:
        p.add("format", f"format must be png, jpeg or webp; got {request.format!r}")
    quality = request.quality
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        p.add("quality", f"quality must be an integer from 1 to 100; got {quality!r}")
    seed = resolve_seed(request.seed, p)
    p.raise_if_any()
    assert seed is not None  # a bad seed was raised just above
    return UpscaleParams(
        model=ctx.model.name, resolution=resolution, softness=float(softness), seed=seed, quantize=quantize,
        format=request.format, quality=quality, image=ref_summary(request.image),
        image_file_id=getattr(request.image, "file_id", None) or None,
        demo=True if ctx.demo else None, note=ctx.demo_note,
    )


def image_size(path: Any) -> tuple[int, int]:
    """The size an image displays at (EXIF orientation applied), as mflux's ``oriented_size``."""
    from PIL import Image

    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def check_upscale(request: UpscaleRequest, params: UpscaleParams, ctx: RequestContext) -> UpscaleParams:
    """Size the output from the stored input image; 422 when it is too small or too large.

    Returns the params with ``input_width``, ``input_height``, ``width`` and ``height`` (the
    memory estimate reads them) and the stored input's ``image_file_id``.
    """
    width, height = image_size(ctx.inputs["image"].path)
    sized = size_output(params, width, height, _settings(ctx))
    return msgspec.structs.replace(sized, image_file_id=ctx.file_ids["image"])


def size_output(params: UpscaleParams, width: int, height: int, settings: Seedvr2Settings) -> UpscaleParams:
    """``params`` with the input and output sizes; 422 when the output is too small or too large."""
    resolution = params.resolution
    out_w, out_h = output_size(width, height, resolution)
    if min(out_w, out_h) < settings.min_resolution:
        raise InvalidRequest(
            f"resolution {resolution!r} turns this {width}x{height} image into {out_w}x{out_h}; the short side "
            f"must be at least {settings.min_resolution} px (scale factors floor it to a multiple of 16). "
            "Use a larger factor or an integer target.",
            field="resolution",
        )
    pixels = out_w * out_h
    if settings.max_output_pixels is not None and pixels > settings.max_output_pixels:
        raise InvalidRequest(
            f"resolution {resolution!r} turns this {width}x{height} image into {out_w}x{out_h} = {pixels} pixels, "
            f"over the output cap of {settings.max_output_pixels} pixels (setting KIAPI_SEEDVR2_MAX_OUTPUT_PIXELS). "
            "Use a smaller scale factor or integer target, or crop the input.",
            field="resolution",
        )
    return msgspec.structs.replace(params, input_width=width, input_height=height, width=out_w, height=out_h)
