"""The ernie Capability declaration (``/v1/image/ernie/*``).

Light on purpose: importing it pulls in msgspec and kiapi_core only. Handlers and the model
loader are named as ``"module:function"`` strings and imported on first use.
"""

from __future__ import annotations

from kiapi_core import Capability, Model, Operation, WeightFiles

from . import docs, memory, validation
from .schemas import EditRequest, GenerateRequest, ImageResponse, TrainRequest, TrainResponse
from .settings import ErnieSettings
from .variants import BASE, DOWNLOAD_PATTERNS, TURBO, Variant

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")



def _model(variant: Variant, *, default: bool, resident_quantize: int) -> Model:
    return Model(
        name=variant.name,
        aliases=variant.aliases,
        default=default,
        features=("text", "image"),
        description=variant.description,
        loader="kiapi_ernie.runtime:load",
        resident_quantize=resident_quantize,
        weights_gb=dict(memory.WEIGHTS_GB),
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


def build_capability(settings: ErnieSettings | None = None) -> Capability:
    """The Capability; ``settings`` only decides the resident quantization of both models."""
    resident = (settings or ErnieSettings()).resident_quantize
    return Capability(
        name="ernie",
        domain="image",
        title=docs.TITLE,
        summary=docs.SUMMARY,
        description=docs.DESCRIPTION,
        models=(_model(TURBO, default=True, resident_quantize=resident),
                _model(BASE, default=False, resident_quantize=resident)),
        operations=(
            Operation(
                name="generate", request=GenerateRequest, result=ImageResponse,
                handler="kiapi_ernie.handlers:generate", job_type="ernie",
                prepare=validation.prepare_generate, check=validation.check_generate,
                inputs={"loras[].file": "file"}, estimate=memory.estimate_generate, produces=IMAGE_TYPES,
                summary=docs.GENERATE_SUMMARY, operation_id=docs.GENERATE_OPERATION_ID,
                description=docs.GENERATE_DESCRIPTION,
            ),
            Operation(
                name="edit", request=EditRequest, result=ImageResponse,
                handler="kiapi_ernie.handlers:edit", job_type="ernie-edit",
                prepare=validation.prepare_edit, check=validation.check_edit,
                inputs={"image": "image", "loras[].file": "file"}, estimate=memory.estimate_edit,
                produces=IMAGE_TYPES, summary=docs.EDIT_SUMMARY, operation_id=docs.EDIT_OPERATION_ID,
                description=docs.EDIT_DESCRIPTION,
            ),
            Operation(
                name="train", request=TrainRequest, result=TrainResponse,
                handler="kiapi_ernie.handlers:train", job_type="ernie-train",
                prepare=validation.prepare_train, check=validation.check_train,
                inputs={"dataset": "file"}, estimate=memory.estimate_train, always_async=True,
                summary=docs.TRAIN_SUMMARY, operation_id=docs.TRAIN_OPERATION_ID,
                description=docs.TRAIN_DESCRIPTION, responses=docs.TRAIN_RESPONSES,
            ),
        ),
        settings=ErnieSettings,
    )


#: The declaration with default settings (resident quantization 8).
CAPABILITY = build_capability()
