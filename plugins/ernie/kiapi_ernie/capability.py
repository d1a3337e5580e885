"""The ernie Capability declaration (``/v1/image/ernie/*``).

Light on purpose: importing it pulls in msgspec and kiapi_core only. Handlers and the model
loader are named as ``"module:function"`` strings and imported on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from kiapi_core.sdk import (
    SAMPLE_DATASET,
    SAMPLE_IMAGE,
    Capability,
    Model,
    Operation,
    RequestContext,
    WeightFiles,
)

from . import docs, memory, validation
from .params import EditParams, GenerateParams, TrainParams
from .schemas import EditRequest, GenerateRequest, ImageResponse, TrainRequest, TrainResponse
from .settings import ErnieSettings
from .variants import BASE, DOWNLOAD_PATTERNS, TURBO, Variant

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")

RESIDENT_SETTING = "KIAPI_ERNIE_RESIDENT_QUANTIZE"


def resident_quantize(variant: Variant, settings: ErnieSettings, *, demo: bool,
                      budget_gb: float | None) -> tuple[int, str]:
    """(bits, who chose them) for the resident instance of ``variant``.

    The setting wins; otherwise the budget decides: the largest of 8/6/5/4/3 bits that leaves
    room for a 1024^2 job of this variant (on a 16 GB Mac q8 weights alone, 11.5 GiB, exceed
    the 10.67 GiB budget). Demo models are tiny: 8.
    """
    if settings.resident_quantize is not None:
        return settings.resident_quantize, RESIDENT_SETTING
    if demo or budget_gb is None:
        return 8, "default"
    bits = memory.choose_resident_quantize(budget_gb, variant.steps, variant.guidance)
    return bits, f"memory budget {budget_gb:.2f} GiB"


def _model(variant: Variant, *, default: bool, resident_quantize: int, demo: bool, chosen_by: str = "default") -> Model:
    return Model(
        name=variant.name,
        aliases=variant.aliases,
        default=default,
        features=("text", "image"),
        description=variant.description,
        loader="kiapi_ernie.runtime:load",
        resident_quantize=resident_quantize,
        weights_gib=dict(memory.DEMO_WEIGHTS_GIB if demo else memory.WEIGHTS_GIB),
        weights=(
            WeightFiles(
                repo=variant.repo,
                revision=variant.revision,
                patterns=DOWNLOAD_PATTERNS,
                size_gib=memory.DISK_GB * 10**9 / 2**30,  # the Hub's decimal GB in GiB
                local_dir_setting=variant.path_setting,
            ),
        ),
        priority=1 if default else 0,
        # Only what the core reads: who chose the resident quantization, and the setting to name.
        info={"resident_quantize_chosen_by": chosen_by, "resident_quantize_setting": RESIDENT_SETTING},
    )


def smoke_test(model: Model, demo: bool = False) -> tuple[str, dict]:
    """The smallest real request, run by ``kiapi check``: one step at 256 px (64 px in demo)."""
    size = 64 if demo else 256
    return "generate", {"model": model.name, "prompt": "a tiny blue cube on a white table",
                        "width": size, "height": size, "steps": 1, "seed": 1}


#: A rank-16 attention + text_proj adapter over 36 blocks, as /train writes it (f32): ~75 MB.
TYPICAL_LORA_MB = 75.0


#: How each operation's request resolves to its params (``prepare``), for :func:`resolved_params`.
_PREPARE: dict[str, tuple[type, Callable[[Any, RequestContext], Any]]] = {
    "generate": (GenerateRequest, validation.prepare_generate),
    "edit": (EditRequest, validation.prepare_edit),
    "train": (TrainRequest, validation.prepare_train),
}
#: A stand-in for an input file in example requests (sized, never run).
EXAMPLE_FILE = {"type": "file_id", "file_id": "example"}


def resolved_params(model: Model, operation: str, body: dict[str, Any],
                    settings: ErnieSettings | None = None) -> dict[str, Any]:
    """The params a request ``body`` for ``operation`` on ``model`` is recorded with, resolved by
    the operation's ``prepare`` (outside demo mode): sizes typical requests without a server."""
    request_type, prepare = _PREPARE[operation]
    request: Any = msgspec.convert(body, request_type)
    params = prepare(request, RequestContext(capability="ernie", model=model, settings=settings or ErnieSettings()))
    return msgspec.to_builtins(params)


def memory_examples(model: Model) -> list[tuple[str, str, dict[str, Any]]]:
    """Typical requests with their resolved params, for ``kiapi models --budget-gb`` and the
    per-Mac table in docs/memory.md."""
    def image(operation: str, side: int, **extra: Any) -> dict[str, Any]:
        body = {"model": model.name, "prompt": "example", "width": side, "height": side, "seed": 0, **extra}
        return resolved_params(model, operation, body)

    examples = [(f"generate {side}x{side}", "generate", image("generate", side)) for side in (512, 1024, 2048)]
    examples.append(("edit 1024x1024", "edit", image("edit", 1024, image=EXAMPLE_FILE)))
    lora = image("generate", 1024, loras=[{"file": EXAMPLE_FILE}])
    examples.append(("generate 1024x1024 + LoRA", "generate", {**lora, "lora_mb": TYPICAL_LORA_MB}))
    for label, low_ram in (("train 512 (low_ram)", True), ("train 512", False)):
        body = {"model": model.name, "dataset": EXAMPLE_FILE, "max_resolution": 512, "low_ram": low_ram}
        examples.append((label, "train", resolved_params(model, "train", body)))
    return examples


def build_capability(settings: ErnieSettings | None = None, *, demo: bool = False,
                     budget_gb: float | None = None) -> Capability:
    """The Capability; ``settings`` (else the memory budget ``budget_gb``, see
    :func:`resident_quantize`) decides the resident quantization of each model, ``demo``
    declares the tiny demo models' sizes instead of the real ones."""
    settings = settings or ErnieSettings()

    def model(variant: Variant, default: bool) -> Model:
        bits, chosen_by = resident_quantize(variant, settings, demo=demo, budget_gb=budget_gb)
        return _model(variant, default=default, resident_quantize=bits, demo=demo, chosen_by=chosen_by)

    return Capability(
        name="ernie",
        domain="image",
        title=docs.TITLE,
        summary=docs.SUMMARY,
        description=docs.DESCRIPTION,
        models=(model(TURBO, True), model(BASE, False)),
        operations=(
            Operation(
                name="generate", request=GenerateRequest, result=ImageResponse,
                handler="kiapi_ernie.handlers:generate", job_type="ernie",
                prepare=validation.prepare_generate, params=GenerateParams, check=validation.check_generate,
                inputs={"loras[].file": "file"}, estimate=memory.estimate_generate, produces=IMAGE_TYPES,
                summary=docs.GENERATE_SUMMARY, operation_id=docs.GENERATE_OPERATION_ID,
                description=docs.GENERATE_DESCRIPTION,
                example={"prompt": "a lighthouse on a cliff at dusk, oil painting", "width": 512, "height": 512,
                         "seed": 42},
            ),
            Operation(
                name="edit", request=EditRequest, result=ImageResponse,
                handler="kiapi_ernie.handlers:edit", job_type="ernie-edit",
                prepare=validation.prepare_edit, params=EditParams, check=validation.check_edit,
                inputs={"image": "image", "loras[].file": "file"}, estimate=memory.estimate_edit,
                produces=IMAGE_TYPES, summary=docs.EDIT_SUMMARY, operation_id=docs.EDIT_OPERATION_ID,
                description=docs.EDIT_DESCRIPTION,
                example={"prompt": "the same hill in winter, covered in snow", "image": SAMPLE_IMAGE,
                         "width": 512, "height": 512, "seed": 42},
            ),
            Operation(
                name="train", request=TrainRequest, result=TrainResponse,
                handler="kiapi_ernie.handlers:train", job_type="ernie-train",
                prepare=validation.prepare_train, params=TrainParams, check=validation.check_train,
                inputs={"dataset": "file"}, estimate=memory.estimate_train, always_async=True, own_model=True,
                summary=docs.TRAIN_SUMMARY, operation_id=docs.TRAIN_OPERATION_ID,
                description=docs.TRAIN_DESCRIPTION, responses=docs.TRAIN_RESPONSES,
                example={"dataset": SAMPLE_DATASET, "num_epochs": 1, "lora_rank": 4},
            ),
        ),
        settings=ErnieSettings,
        smoke_test=smoke_test,
        memory_examples=memory_examples,
    )


#: The declaration with default settings and no budget (resident quantization 8).
CAPABILITY = build_capability()
