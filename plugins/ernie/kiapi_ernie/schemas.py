"""Wire shapes of the ernie capability: request and result Structs.

These Structs are the binding contract of ``/v1/image/ernie/*``: the host decodes request
bodies with them and generates the capability's OpenAPI document from them, which must match
``spec/ernie.openapi.json`` (descriptions are copied from the spec verbatim). The schema only
carries the bounds the spec states; every other rule (width multiple of 16, ``steps <= 100``,
quantize in {3, 4, 5, 6, 8}, at most 4 loras ...) is checked by the plugin's ``prepare`` step,
so the error names the fix instead of a bare schema violation.

This module imports only msgspec, typing and kiapi_core so the host can build documents and
decoders without loading mlx or mflux.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from kiapi_core.sdk import FileRef

__all__ = [
    "EditRequest",
    "GenerateRequest",
    "ImageResponse",
    "LoraRef",
    "Timings",
    "TrainRequest",
    "TrainResponse",
]

# --- fields shared by several requests -------------------------------------------------------

Mode = Annotated[
    Literal["sync", "async"],
    msgspec.Meta(
        description="`sync` waits for the image (504 on timeout); `async` returns 202 with a "
        "job_id immediately — poll GET /v1/jobs/{job_id}."
    ),
]
Guidance = Annotated[
    float | None,
    msgspec.Meta(
        description="Classifier-free guidance scale. Omit for the variant default (turbo 1.0, "
        "base 4.0); higher follows the prompt more strictly."
    ),
]
Seed = Annotated[
    int | None,
    msgspec.Meta(
        description="Random seed for reproducibility. Omit for a random seed (the resolved seed "
        "is recorded in the result `params`)."
    ),
]
Quantize = Annotated[
    int | None,
    msgspec.Meta(
        description="Quantization bits, one of {3, 4, 5, 6, 8}. Omit to use the resident model's "
        "quantization (default 8). A differing value builds a one-off transient model (slower, "
        "not reused)."
    ),
]
Scheduler = Annotated[
    str, msgspec.Meta(description="Noise scheduler. `linear` is the default and only tested value.")
]
ImageFormat = Annotated[
    Literal["png", "jpeg", "webp"], msgspec.Meta(description="Output image encoding for the produced file.")
]
Quality = Annotated[
    int,
    msgspec.Meta(ge=1, le=100, description="Encoder quality 1..100 (used for jpeg/webp; ignored for png)."),
]
Steps = Annotated[int, msgspec.Meta(ge=1)]
_LORAS_DESCRIPTION = (
    "Up to 4 LoRA adapters [{file, scale}] referencing Files-API ids. Any lora forces a one-off "
    "transient model (slower, not reused)."
)
_SIZE_RULE = "Omit for the server default (1024). Must be a multiple of 16 and at most 2048."


class LoraRef(msgspec.Struct, kw_only=True):
    """One LoRA adapter to apply, by Files-API reference and blend scale.

    Any lora forces a one-off transient model (slower, not reused). Up to 4 may
    be passed in a request's ``loras`` list."""

    file: Annotated[
        FileRef,
        msgspec.Meta(
            description="The LoRA adapter (`.safetensors`) to apply, as a Files-API file id, "
            "http(s) URL, or data URL."
        ),
    ]
    scale: Annotated[
        float,
        msgspec.Meta(
            description="Blend strength for this adapter. 1.0 applies it at full weight; lower "
            "values weaken its effect, higher values exaggerate it."
        ),
    ] = 1.0


Loras = Annotated[list[LoraRef], msgspec.Meta(description=_LORAS_DESCRIPTION)]


class GenerateRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/image/ernie/generate`` (text-to-image).

    Unknown fields are accepted and ignored (the spec says ``additionalProperties: true``).
    """

    __openapi__: ClassVar[dict[str, Any]] = {"description": None}

    model: Annotated[
        str | None,
        msgspec.Meta(
            description="Model variant (see GET /v1/image/ernie/models). Omit for the default "
            "`turbo`; `base` is the higher-quality, slower variant. Aliases such as "
            "`ernie-image-turbo` / `ernie-image` are accepted."
        ),
    ] = None
    mode: Mode = "sync"
    prompt: Annotated[
        str, msgspec.Meta(min_length=1, description="Text prompt describing the image to generate (required).")
    ]
    negative_prompt: Annotated[
        str | None, msgspec.Meta(description="Optional text describing what to avoid in the image.")
    ] = None
    width: Annotated[int | None, msgspec.Meta(description=f"Output width in pixels. {_SIZE_RULE}")] = None
    height: Annotated[int | None, msgspec.Meta(description=f"Output height in pixels. {_SIZE_RULE}")] = None
    steps: Annotated[
        Steps | None,
        msgspec.Meta(
            description="Number of denoising steps (1..100). Omit for the variant default (turbo 8, "
            "base 50). More steps = slower, sometimes higher quality."
        ),
    ] = None
    guidance: Guidance = None
    seed: Seed = None
    quantize: Quantize = None
    scheduler: Scheduler = "linear"
    format: ImageFormat = "png"
    quality: Quality = 90
    loras: Loras = msgspec.field(default_factory=list)


class EditRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/image/ernie/edit`` (single-image image-to-image).

    Unknown fields are accepted and ignored (the spec says ``additionalProperties: true``).
    """

    __openapi__: ClassVar[dict[str, Any]] = {"description": None}

    model: Annotated[
        str | None,
        msgspec.Meta(
            description="Model variant (see GET /v1/image/ernie/models). Omit for the default "
            "`turbo`; `base` is higher-quality but slower. Aliases such as `ernie-image-turbo` / "
            "`ernie-image` are accepted."
        ),
    ] = None
    mode: Mode = "sync"
    prompt: Annotated[
        str, msgspec.Meta(min_length=1, description="Text prompt describing the desired edit (required).")
    ]
    negative_prompt: Annotated[
        str | None, msgspec.Meta(description="Optional text describing what to avoid in the result.")
    ] = None
    image: Annotated[
        FileRef,
        msgspec.Meta(description="Input image to edit, as a Files-API file id, http(s) URL, or data URL."),
    ]
    image_strength: Annotated[
        float,
        msgspec.Meta(
            description="How much the input image is preserved, in 0..1. Lower keeps more of the "
            "input; higher follows the prompt more freely."
        ),
    ] = 0.4
    width: Annotated[
        int | None,
        msgspec.Meta(description=f"Output width in pixels. {_SIZE_RULE} By default must equal height (square)."),
    ] = None
    height: Annotated[
        int | None,
        msgspec.Meta(description=f"Output height in pixels. {_SIZE_RULE} By default must equal width (square)."),
    ] = None
    steps: Annotated[
        Steps | None,
        msgspec.Meta(
            description="Number of denoising steps (1..100). Omit for the variant default (turbo 8, base 50)."
        ),
    ] = None
    guidance: Guidance = None
    seed: Seed = None
    quantize: Quantize = None
    scheduler: Scheduler = "linear"
    format: ImageFormat = "png"
    quality: Quality = 90
    loras: Loras = msgspec.field(default_factory=list)


class TrainRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /v1/image/ernie/train`` (LoRA finetune, always async).

    Unknown fields are accepted and ignored (the spec says ``additionalProperties: true``).
    """

    __openapi__: ClassVar[dict[str, Any]] = {"description": None}

    model: Annotated[
        str | None,
        msgspec.Meta(
            description="Model variant to finetune (see GET /v1/image/ernie/models). Omit for the "
            "default `turbo`."
        ),
    ] = None
    dataset: Annotated[
        FileRef,
        msgspec.Meta(
            description="Training dataset as a Files-API reference to a ZIP. Images may sit at the "
            "top level or in a single subfolder; each image needs a same-stem `.txt` caption "
            "(e.g. `cat.png` + `cat.txt`). `preview*` images are exempt from the caption requirement."
        ),
    ]
    seed: Annotated[int, msgspec.Meta(description="Random seed for the training run.")] = 42
    steps: Annotated[
        int | None,
        msgspec.Meta(
            description="Inference/denoising steps used during training. Omit for the variant "
            "default (turbo 8, base 50)."
        ),
    ] = None
    guidance: Annotated[
        float | None,
        msgspec.Meta(description="Guidance scale. Omit for the variant default (turbo 1.0, base 4.0)."),
    ] = None
    quantize: Annotated[
        int | None,
        msgspec.Meta(
            description="Quantization bits during training, one of {3, 4, 5, 6, 8}. Omit for the "
            "variant default (8)."
        ),
    ] = None
    max_resolution: Annotated[
        int | None,
        msgspec.Meta(description="Images are resized so their long side is at most this many pixels."),
    ] = 512
    low_ram: Annotated[
        bool, msgspec.Meta(description="Trade speed for lower peak memory during training.")
    ] = True
    num_epochs: Annotated[int, msgspec.Meta(ge=1, description="Number of passes over the dataset.")] = 10
    batch_size: Annotated[int, msgspec.Meta(ge=1, description="Training batch size.")] = 1
    timestep_low: Annotated[
        int | None,
        msgspec.Meta(description="Lower diffusion-timestep bound to sample. Omit for the default (1)."),
    ] = None
    timestep_high: Annotated[
        int | None,
        msgspec.Meta(description="Upper diffusion-timestep bound to sample. Omit to use `steps`."),
    ] = None
    learning_rate: Annotated[float, msgspec.Meta(description="AdamW learning rate.")] = 0.0001
    save_frequency: Annotated[
        int | None,
        msgspec.Meta(description="Checkpoint every N steps. Omit to only keep the final checkpoint."),
    ] = None
    lora_rank: Annotated[int, msgspec.Meta(ge=1, description="Rank of the trained LoRA adapter.")] = 16
    lora_include_ff: Annotated[
        bool,
        msgspec.Meta(
            description="Also train feed-forward / time-embedding layers (larger adapter), not "
            "just attention projections."
        ),
    ] = False
    lora_layers: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(
            description="Advanced: explicit mflux LoRA target spec. Omit to use the built-in "
            "default targets derived from `lora_rank` / `lora_include_ff`."
        ),
    ] = None


class Timings(msgspec.Struct, kw_only=True):
    # No docstring on purpose: the spec's ``_Timings`` schema has no description.
    __openapi__: ClassVar[dict[str, Any]] = {"name": "_Timings"}

    total_s: Annotated[
        float, msgspec.Meta(description="Wall-clock generation time in seconds (model run only).")
    ]


class ImageResponse(msgspec.Struct, kw_only=True):
    """Capability-specific ``result`` for a succeeded ernie generate/edit job."""

    model: Annotated[
        str, msgspec.Meta(description="Resolved model variant that produced the image (turbo | base).")
    ]
    prompt: Annotated[str, msgspec.Meta(description="The prompt used for the run.")]
    file_id: Annotated[
        str,
        msgspec.Meta(
            description="Files-API id of the produced image. Fetch metadata at GET /v1/files/{id} "
            "or bytes at /download. This is also the artifact returned as raw bytes by a "
            "single-artifact sync call."
        ),
    ]
    image_bytes: Annotated[int, msgspec.Meta(description="Size of the produced image in bytes.")]
    width: Annotated[int, msgspec.Meta(description="Width in pixels of the produced image.")]
    height: Annotated[int, msgspec.Meta(description="Height in pixels of the produced image.")]
    params: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="Resolved parameters actually used for the run (model, seed, steps, "
            "guidance, quantize, scheduler, format, quality, loras, …), so the result is "
            "reproducible."
        ),
    ]
    timings: Annotated[Timings, msgspec.Meta(description="kiapi extension: server-side timing.")]


class TrainResponse(msgspec.Struct, kw_only=True):
    """``result`` of a succeeded ernie train job.

    Not part of the spec (``/train`` documents its 200 body as free-form, since it is always
    async), so this shape is kiapi's own and deliberately loose: ``config``, ``timings`` and
    ``lora_targets`` carry whatever the training run reports.
    """

    model: str
    #: Files-API id of the trained ``.safetensors`` adapter (also the job's artifact).
    adapter_file_id: str
    adapter_bytes: int
    num_images: int
    #: The resolved training configuration (epochs, batch size, rank, learning rate ...).
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    #: The LoRA target modules that were trained.
    lora_targets: list[Any] = msgspec.field(default_factory=list)
    #: Phase timings in seconds (``total_s``, ``load_s``, ``train_s`` ...).
    timings: dict[str, float] = msgspec.field(default_factory=dict)
    #: File ids of intermediate checkpoints kept by ``save_frequency``.
    checkpoints: list[str] = msgspec.field(default_factory=list)
    #: Resolved request parameters, as on the job.
    params: dict[str, Any] = msgspec.field(default_factory=dict)
