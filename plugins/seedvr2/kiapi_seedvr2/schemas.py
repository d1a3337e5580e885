"""Wire shapes of the seedvr2 capability: the upscale request and its result.

These Structs are the binding contract of ``/v1/image/seedvr2/upscale``: the host decodes
request bodies with them and generates the capability's OpenAPI document from them, which must
match ``spec/seedvr2.openapi.json`` (descriptions copied verbatim). The schema carries only the
bounds the spec states; the rest (``resolution`` as 16..2048 or ``"<factor>x"`` up to 4.0x,
quantize in {3, 4, 5, 6, 8}) is checked by the plugin's ``prepare`` step with a message that
names the fix.

This module imports only msgspec, typing and kiapi_core, never mlx or mflux.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from kiapi_core.sdk import FileRef, ImageFormat

__all__ = ["ImageResponse", "Timings", "UpscaleParams", "UpscaleRequest"]


class UpscaleRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/image/seedvr2/upscale``.

    Unknown fields are accepted and ignored (the spec says ``additionalProperties: true``).
    """

    __openapi__: ClassVar[dict[str, Any]] = {"description": None}

    model: Annotated[
        str | None,
        msgspec.Meta(
            description="Model variant (see GET /v1/image/seedvr2/models). Omit for the default "
            "`3b`; `7b` is the larger, higher-quality variant. Aliases `seedvr2-3b` / `seedvr2-7b` "
            "are also accepted."
        ),
    ] = None
    mode: Annotated[
        Literal["sync", "async"],
        msgspec.Meta(
            description="`sync` waits for the image (504 on timeout); `async` returns 202 with a "
            "job_id immediately — poll GET /v1/jobs/{job_id}."
        ),
    ] = "sync"
    image: Annotated[
        FileRef,
        msgspec.Meta(description="Input image to upscale (Files-API file id, http(s) URL, or data URL)."),
    ]
    resolution: Annotated[
        int | str,
        msgspec.Meta(
            description="Target size: an integer shortest-edge pixel target (16..2048), or a scale "
            "factor string like `2x` / `1.5x` (> 0 and at most 4.0x). Default `2x`."
        ),
    ] = "2x"
    softness: Annotated[
        float,
        msgspec.Meta(
            ge=0.0,
            le=1.0,
            description="Detail smoothing in 0..1. 0 keeps maximum sharpness; higher values soften "
            "the result. Default 0.0.",
        ),
    ] = 0.0
    seed: Annotated[
        int | None,
        msgspec.Meta(
            description="Random seed for reproducibility. Omit for a random seed (the resolved seed "
            "is recorded in the result `params`)."
        ),
    ] = None
    quantize: Annotated[
        int | None,
        msgspec.Meta(
            description="Quantization bits, one of {3, 4, 5, 6, 8}. Omit to use the resident model's "
            "quantization (q8). A differing value builds a one-off transient model (slower, not "
            "reused)."
        ),
    ] = None
    format: Annotated[
        Literal["png", "jpeg", "webp"],
        msgspec.Meta(description="Output image encoding for the produced file."),
    ] = "png"
    quality: Annotated[
        int,
        msgspec.Meta(ge=1, le=100, description="Encoder quality 1..100 (used for jpeg/webp; ignored for png)."),
    ] = 90


class Timings(msgspec.Struct, kw_only=True):
    # No docstring on purpose: the spec's ``_Timings`` schema has no description.
    __openapi__: ClassVar[dict[str, Any]] = {"name": "_Timings"}

    total_s: Annotated[
        float, msgspec.Meta(description="Wall-clock upscale time in seconds (model run only).")
    ]


class ImageResponse(msgspec.Struct, kw_only=True):
    """Capability-specific ``result`` for a succeeded seedvr2 upscale job."""

    model: Annotated[
        str, msgspec.Meta(description="Resolved model variant that produced the image (3b or 7b).")
    ]
    file_id: Annotated[
        str,
        msgspec.Meta(
            description="Files-API id of the upscaled image. Fetch metadata at GET /v1/files/{id} "
            "or bytes at /download. This is also the artifact returned as raw bytes by a "
            "single-artifact sync call."
        ),
    ]
    image_bytes: Annotated[int, msgspec.Meta(description="Size of the produced image in bytes.")]
    input_width: Annotated[int, msgspec.Meta(description="Width in pixels of the input image.")]
    input_height: Annotated[int, msgspec.Meta(description="Height in pixels of the input image.")]
    width: Annotated[int, msgspec.Meta(description="Width in pixels of the upscaled image.")]
    height: Annotated[int, msgspec.Meta(description="Height in pixels of the upscaled image.")]
    params: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="Resolved parameters actually used for the run (model, resolution, "
            "softness, seed, quantize, format, quality), so the result is reproducible."
        ),
    ]
    timings: Annotated[Timings, msgspec.Meta(description="kiapi extension: server-side timing.")]


class UpscaleParams(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """The resolved parameters of one upscale (plugin API 2): what ``prepare`` returns, the job
    records and the handler runs. Not part of the wire contract; ``ImageResponse.params`` is
    built from it. Fields left at their default (``None``) are not recorded."""

    model: str
    resolution: int | str
    softness: float
    seed: int
    quantize: int | None
    format: ImageFormat
    quality: int
    #: The input as recorded: ids and URLs without secrets, never inline data (``ref_summary``).
    image: dict[str, Any]
    #: The Files-API id of the input image (set by ``check`` once the input is stored).
    image_file_id: str | None = None
    demo: bool | None = None
    note: str | None = None
    #: Set by ``check`` from the stored input: input and output sizes (the estimate reads them).
    input_width: int | None = None
    input_height: int | None = None
    width: int | None = None
    height: int | None = None
