"""The ernie Capability declaration (``/v1/image/ernie/*``).

Light on purpose: importing it pulls in msgspec and kiapi_core only. Handlers and the model
loader are named as ``"module:function"`` strings and imported on first use.
"""

from __future__ import annotations

from kiapi_core import Capability, Model, Operation, WeightFiles
from kiapi_core.openapi.examples import SAMPLE_DATASET, SAMPLE_IMAGE

from . import docs, memory, validation
from .schemas import EditRequest, GenerateRequest, ImageResponse, TrainRequest, TrainResponse
from .settings import ErnieSettings
from .variants import BASE, DOWNLOAD_PATTERNS, TURBO, Variant

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")



def _model(variant: Variant, *, default: bool, resident_quantize: int, demo: bool) -> Model:
    return Model(
        name=variant.name,
        aliases=variant.aliases,
        default=default,
        features=("text", "image"),
        description=variant.description,
        loader="kiapi_ernie.runtime:load",
        resident_quantize=resident_quantize,
        weights_gb=dict(memory.DEMO_WEIGHTS_GB if demo else memory.WEIGHTS_GB),
        weights=(
            WeightFiles(
                repo=variant.repo,
                revision=variant.revision,
                patterns=DOWNLOAD_PATTERNS,
                size_gb=memory.DISK_GB,
                local_dir_setting=variant.path_setting,
            ),
        ),
        priority=1 if default else 0,
        info={"repo": variant.repo, "mflux_model": variant.mflux_name, "steps": variant.steps,
              "guidance": variant.guidance},
    )


def smoke_test(model: Model, demo: bool = False) -> tuple[str, dict]:
    """The smallest real request, run by ``kiapi check``: one step at 256 px (64 px in demo)."""
    size = 64 if demo else 256
    return "generate", {"model": model.name, "prompt": "a tiny blue cube on a white table",
                        "width": size, "height": size, "steps": 1, "seed": 1}


def build_capability(settings: ErnieSettings | None = None, *, demo: bool = False) -> Capability:
    """The Capability; ``settings`` decides the resident quantization of both models, ``demo``
    declares the tiny demo models' sizes instead of the real ones."""
    resident = (settings or ErnieSettings()).resident_quantize
    return Capability(
        name="ernie",
        domain="image",
        title=docs.TITLE,
        summary=docs.SUMMARY,
        description=docs.DESCRIPTION,
        models=(_model(TURBO, default=True, resident_quantize=resident, demo=demo),
                _model(BASE, default=False, resident_quantize=resident, demo=demo)),
        operations=(
            Operation(
                name="generate", request=GenerateRequest, result=ImageResponse,
                handler="kiapi_ernie.handlers:generate", job_type="ernie",
                prepare=validation.prepare_generate, check=validation.check_generate,
                inputs={"loras[].file": "file"}, estimate=memory.estimate_generate, produces=IMAGE_TYPES,
                transient=memory.builds_transient_model,
                summary=docs.GENERATE_SUMMARY, operation_id=docs.GENERATE_OPERATION_ID,
                description=docs.GENERATE_DESCRIPTION,
                example={"prompt": "a lighthouse on a cliff at dusk, oil painting", "width": 512, "height": 512,
                         "seed": 42},
            ),
            Operation(
                name="edit", request=EditRequest, result=ImageResponse,
                handler="kiapi_ernie.handlers:edit", job_type="ernie-edit",
                prepare=validation.prepare_edit, check=validation.check_edit,
                inputs={"image": "image", "loras[].file": "file"}, estimate=memory.estimate_edit,
                transient=memory.builds_transient_model,
                produces=IMAGE_TYPES, summary=docs.EDIT_SUMMARY, operation_id=docs.EDIT_OPERATION_ID,
                description=docs.EDIT_DESCRIPTION,
                example={"prompt": "the same hill in winter, covered in snow", "image": SAMPLE_IMAGE,
                         "width": 512, "height": 512, "seed": 42},
            ),
            Operation(
                name="train", request=TrainRequest, result=TrainResponse,
                handler="kiapi_ernie.handlers:train", job_type="ernie-train",
                prepare=validation.prepare_train, check=validation.check_train,
                inputs={"dataset": "file"}, estimate=memory.estimate_train, always_async=True, own_model=True,
                summary=docs.TRAIN_SUMMARY, operation_id=docs.TRAIN_OPERATION_ID,
                description=docs.TRAIN_DESCRIPTION, responses=docs.TRAIN_RESPONSES,
                example={"dataset": SAMPLE_DATASET, "num_epochs": 1, "lora_rank": 4},
            ),
        ),
        settings=ErnieSettings,
        smoke_test=smoke_test,
    )


#: The declaration with default settings (resident quantization 8).
CAPABILITY = build_capability()
