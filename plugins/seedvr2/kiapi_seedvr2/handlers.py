"""The upscale handler: runs on the model thread with a kiapi JobContext."""

from __future__ import annotations

from typing import Any

from kiapi_core.sdk import EXTENSIONS, MEDIA_TYPES, JobContext, encode_image

from .schemas import ImageResponse, Timings, UpscaleParams
from .validation import image_size, output_size, scale_factor

SAVING = 0.96
#: The params fields a result names (not the sizes: the result has its own fields for them).
RESULT_PARAMS = ("model", "resolution", "softness", "seed", "quantize", "format", "quality", "image",
                 "image_file_id", "demo", "note")


def upscale(job: JobContext) -> ImageResponse:
    """Upscale ``job.inputs["image"]`` with the resolved ``job.params``; store the image."""
    params: UpscaleParams = job.params
    image_file = job.inputs["image"]
    if params.width and params.height and params.input_width and params.input_height:
        in_w, in_h, out_w, out_h = params.input_width, params.input_height, params.width, params.height
    else:  # the params were not sized by check(): size them here, same arithmetic
        in_w, in_h = image_size(image_file.path)
        out_w, out_h = output_size(in_w, in_h, params.resolution)

    if min(out_w, out_h) <= min(in_w, in_h):
        job.warn(not_larger_warning(in_w, in_h, out_w, out_h, params.resolution))
    runtime = job.runtime(quantize=params.quantize)
    image, measured = runtime.upscale(
        image_file.path,
        resolution=params.resolution,
        softness=params.softness,
        seed=params.seed,
        width=out_w,
        height=out_h,
        report=job.progress,
    )

    job.progress(SAVING, "saving")
    fmt = params.format
    data = encode_image(image, fmt, params.quality)
    stored = job.store_artifact(
        data,
        filename=f"seedvr2_{job.model.name}_{params.seed}.{EXTENSIONS[fmt]}",
        content_type=MEDIA_TYPES[fmt],
        meta={"width": image.width, "height": image.height, "model": job.model.name, "demo": job.demo},
    )
    for name, value in measured.items():
        job.metric(name, value)
    if (image.width, image.height) != (out_w, out_h):  # would mean mflux changed its sizing
        job.warn(f"expected a {out_w}x{out_h} output, mflux produced {image.width}x{image.height}")
    return ImageResponse(
        model=job.model.name,
        file_id=stored.file_id,
        image_bytes=stored.record.size,  # with the params the core embeds
        input_width=in_w,
        input_height=in_h,
        width=image.width,
        height=image.height,
        params=result_params(params, image_file.file_id),
        timings=Timings(total_s=measured["run_s"]),
    )


def result_params(params: UpscaleParams, image_file_id: str) -> dict[str, Any]:
    """The result's ``params``: the recorded ones a client reruns with (``None`` ones left out)."""
    recorded = {k: getattr(params, k) for k in RESULT_PARAMS}
    recorded["image_file_id"] = params.image_file_id or image_file_id
    return {k: v for k, v in recorded.items() if v is not None or k == "quantize"}


def not_larger_warning(in_w: int, in_h: int, out_w: int, out_h: int, resolution: int | str) -> str:
    """Why the output is no larger than the input: the run still goes ahead (SeedVR2 restores
    detail at any size), but a client asking for ``"1.5x"`` of a 16 px image expected more."""
    short, out_short = min(in_w, in_h), min(out_w, out_h)
    message = f"the {out_w}x{out_h} output is not larger than the {in_w}x{in_h} input"
    factor = scale_factor(resolution)
    if factor is not None and factor * short > out_short:
        message += (f": {resolution!r} of a {short} px short side is {factor * short:g} px, which mflux floors "
                    f"to a multiple of 16 ({out_short} px)")
    return message + f"; to upscale, use an integer target above {short} (e.g. {2 * short}) or a larger factor"
