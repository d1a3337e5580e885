"""The Capability declaration: models, operations, validation and memory estimates.

Light on purpose (msgspec and kiapi_core.sdk only): it is imported while the host starts.
"""

from kiapi_core.sdk import SAMPLE_IMAGE, Capability, InvalidRequest, Model, Operation, RequestContext

from .schemas import (
    PillowConvertParams,
    PillowConvertRequest,
    PillowImage,
    PillowResizeParams,
    PillowResizeRequest,
    PillowSettings,
)

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
#: Decoded source + resized copy + encoder buffer, 4 bytes (RGBA) per pixel each.
BYTES_PER_PIXEL = 4 * 3


def _filter(name: str, *aliases: str, default: bool = False, description: str) -> Model:
    return Model(
        name=name, aliases=aliases, default=default, features=("resize",), description=description,
        loader="kiapi_pillow.runtime:load",  # imported on the model thread, on first use
        weights_gib={None: 0.0},  # no weights: a resampler costs nothing while resident
        info={"filter": name.upper()},
    )


MODELS = (
    _filter("lanczos", "antialias", default=True, description="Sharpest; best for photos."),
    _filter("bicubic", "cubic", description="Smooth, a little faster."),
    _filter("bilinear", "linear", description="Fast and soft."),
    _filter("hamming", description="Like bilinear with less aliasing when shrinking."),
    _filter("box", description="Averages pixels; fast downscaling."),
    _filter("nearest", "pixel-art", description="No smoothing; keeps hard pixel edges."),
)


def _limit(ctx: RequestContext) -> int:
    settings = ctx.settings or PillowSettings()
    return min(settings.max_output_pixels, ctx.limits.max_image_pixels)


def prepare_resize(request: PillowResizeRequest, ctx: RequestContext) -> PillowResizeParams:
    """Reject impossible combinations before anything is queued (422 naming the field)."""
    sized = request.width is not None or request.height is not None
    if sized == (request.scale is not None):
        raise InvalidRequest("give width and/or height, or scale (not both)", field="scale")
    if request.fit == "stretch" and (request.width is None or request.height is None):
        raise InvalidRequest("fit 'stretch' needs both width and height", field="fit")
    return PillowResizeParams(width=request.width, height=request.height, scale=request.scale, fit=request.fit,
                              filter=ctx.model.name, format=request.format, quality=request.quality,
                              max_output_pixels=_limit(ctx))


def prepare_convert(request: PillowConvertRequest, ctx: RequestContext) -> PillowConvertParams:
    return PillowConvertParams(format=request.format, quality=request.quality, background=request.background,
                               max_output_pixels=_limit(ctx))


def estimate(params: PillowResizeParams | PillowConvertParams, ctx: RequestContext) -> float:
    """Peak GiB of one job: exact when both sides are given, else the output-size limit."""
    pixels = params.max_output_pixels
    if params.width and params.height:
        pixels = min(pixels, params.width * params.height)
    return pixels * BYTES_PER_PIXEL / 2**30


CAPABILITY = Capability(
    name="pillow",
    domain="image",
    title="Pillow image tools",
    summary="Resize and convert images with classic resampling filters.",
    description="Resize (`/resize`) or re-encode (`/convert`) an image. The model is the "
                "resampling filter: `lanczos` (default), `bicubic`, `bilinear`, `hamming`, `box`, `nearest`.",
    version="0.1.0",
    models=MODELS,
    operations=(
        Operation(name="resize", request=PillowResizeRequest, result=PillowImage,
                  handler="kiapi_pillow.handlers:resize", job_type="pillow-resize",
                  prepare=prepare_resize, params=PillowResizeParams, inputs={"image": "image"}, estimate=estimate,
                  produces=IMAGE_TYPES, summary="Resize an image",
                  example={"image": SAMPLE_IMAGE, "width": 128},  # runs as it stands in Swagger UI
                  uses_mlx=False),  # Pillow only: the light pool, measured by RSS
        Operation(name="convert", request=PillowConvertRequest, result=PillowImage,
                  handler="kiapi_pillow.handlers:convert", job_type="pillow-convert",
                  prepare=prepare_convert, params=PillowConvertParams, inputs={"image": "image"}, estimate=estimate,
                  produces=IMAGE_TYPES, summary="Convert an image to another format",
                  example={"image": SAMPLE_IMAGE, "format": "webp"}, uses_mlx=False),
    ),
    settings=PillowSettings,
)
