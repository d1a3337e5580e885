"""Request, result and settings Structs: the wire contract of the capability.

Names carry a ``Pillow`` prefix because they become OpenAPI component names, which must not
clash with the core's (``Job``, ``FileRef`` ...) or another plugin's.
"""

from typing import Annotated, Literal

import msgspec

from kiapi_core.sdk import FileRef

Format = Literal["png", "jpeg", "webp"]
Side = Annotated[int, msgspec.Meta(ge=1, le=16384, description="Pixels.")]
Quality = Annotated[int, msgspec.Meta(ge=1, le=100, description="JPEG/WebP quality.")]


class PillowResizeRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Resize an image to a width and/or height, or by a scale factor."""

    image: FileRef
    width: Side | None = None
    height: Side | None = None
    scale: Annotated[float, msgspec.Meta(gt=0, le=8, description="Factor; instead of width/height.")] | None = None
    fit: Literal["contain", "stretch"] = "contain"
    model: Annotated[str | None, msgspec.Meta(description="Resampling filter (see /models).")] = None
    format: Format | None = None
    quality: Quality = 90
    mode: Literal["sync", "async"] = "sync"


class PillowConvertRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Re-encode an image in another format; transparency is flattened for JPEG."""

    image: FileRef
    format: Format
    quality: Quality = 90
    background: Annotated[str, msgspec.Meta(pattern="^#[0-9a-fA-F]{6}$")] = "#ffffff"
    mode: Literal["sync", "async"] = "sync"


class PillowResizeParams(msgspec.Struct, kw_only=True, frozen=True):
    """What ``prepare`` resolved for a resize: recorded as the job's ``params``, handed to the
    handler as ``job.params``."""

    width: int | None
    height: int | None
    scale: float | None
    fit: Literal["contain", "stretch"]
    filter: str
    format: Format | None
    quality: int
    max_output_pixels: int


class PillowConvertParams(msgspec.Struct, kw_only=True, frozen=True):
    """What ``prepare`` resolved for a convert."""

    format: Format
    quality: int
    background: str
    max_output_pixels: int
    width: int | None = None
    height: int | None = None


class PillowImage(msgspec.Struct, kw_only=True):
    """The stored output image."""

    file_id: str
    width: int
    height: int
    format: Format
    bytes: int
    source_width: int
    source_height: int
    filter: str | None = None


class PillowSettings(msgspec.Struct, kw_only=True, frozen=True):
    """Plugin settings: ``KIAPI_PILLOW_*`` or the ``[pillow]`` table of the config file."""

    max_output_pixels: int = 40_000_000
    "Largest output image, in pixels."
