"""Operation handlers: run on the model thread with a JobContext (``job``).

This module is imported by the host only when a job first needs it (the Operation names it as
``"kiapi_pillow.handlers:resize"``), so importing Pillow at the top is fine here.
"""

from typing import Any

from PIL import Image, ImageOps

from kiapi_core.sdk import EXTENSIONS, MEDIA_TYPES, ImageFormat, InvalidRequest, JobContext, encode_image

from .schemas import PillowConvertParams, PillowImage, PillowResizeParams

#: Pillow's input format -> the output format that keeps it (others become PNG).
_OUTPUT_FORMATS: dict[str, ImageFormat] = {"png": "png", "jpeg": "jpeg", "webp": "webp"}


def _open(job: JobContext) -> tuple[Any, str]:
    job.progress(0.05, "decoding")
    with Image.open(job.inputs["image"].path) as source:
        fmt = (source.format or "PNG").lower()
        image = ImageOps.exif_transpose(source)  # phone photos: apply the EXIF rotation
        image.load()
    return image, fmt


def _target(size: tuple[int, int], p: PillowResizeParams) -> tuple[int, int]:
    width, height = size
    if p.scale is not None:
        return max(1, round(width * p.scale)), max(1, round(height * p.scale))
    if p.width and p.height:
        if p.fit == "stretch":
            return p.width, p.height
        ratio = min(p.width / width, p.height / height)
        return max(1, round(width * ratio)), max(1, round(height * ratio))
    if p.width:
        return p.width, max(1, round(height * p.width / width))
    assert p.height is not None  # prepare_resize made sure one size is given
    return max(1, round(width * p.height / height)), p.height


def _store(job: JobContext, image: Any, fmt: ImageFormat, source: Any, filter: str | None) -> PillowImage:
    job.progress(0.8, "encoding")
    data = encode_image(image, fmt, job.params.quality)
    job.progress(0.95, "saving")
    stored = job.store_artifact(data, filename=f"pillow_{job.job_id}.{EXTENSIONS[fmt]}",
                                content_type=MEDIA_TYPES[fmt], meta={"capability": "pillow"})
    return PillowImage(file_id=stored.file_id, width=image.width, height=image.height, format=fmt,
                       bytes=len(data), source_width=source.width, source_height=source.height, filter=filter)


def _check_size(size: tuple[int, int], limit: int) -> None:
    if size[0] * size[1] > limit:
        raise InvalidRequest(f"the output would be {size[0]}x{size[1]} pixels, over the limit of {limit} "
                             "(KIAPI_PILLOW_MAX_OUTPUT_PIXELS); ask for a smaller size")


def resize(job: JobContext) -> PillowImage:
    p: PillowResizeParams = job.params
    resampler = job.runtime()  # the model's runtime: a Resampler for the requested filter
    source, source_format = _open(job)
    size = _target(source.size, p)
    _check_size(size, p.max_output_pixels)
    job.check_canceled()  # a cancel requested while decoding stops here, before the work
    job.progress(0.3, "resizing")
    image = resampler.resize(source, size)
    fmt = p.format or _OUTPUT_FORMATS.get(source_format, "png")
    return _store(job, image, fmt, source, resampler.name)


def convert(job: JobContext) -> PillowImage:
    p: PillowConvertParams = job.params
    source, _ = _open(job)
    _check_size(source.size, p.max_output_pixels)
    job.check_canceled()
    image = source
    if p.format == "jpeg" and image.mode in ("RGBA", "LA", "P"):
        job.progress(0.5, "flattening")
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, p.background)
        image.paste(rgba, mask=rgba.getchannel("A"))
    return _store(job, image, p.format, source, None)
