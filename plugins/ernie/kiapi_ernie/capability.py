"""The ernie Capability declaration (``/v1/image/ernie/*``).

Light on purpose: importing it pulls in msgspec and kiapi_core only. Handlers and the model
loader are named as ``"module:function"`` strings and imported on first use.
"""

from __future__ import annotations

from kiapi_core.sdk import SAMPLE_DATASET, SAMPLE_IMAGE, Capability, Model, Operation, WeightFiles

from . import docs, memory, validation
from .schemas import EditRequest, GenerateRequest, ImageResponse, TrainRequest, TrainResponse
from .settings import ErnieSettings
from .trainconfig import default_lora_targets
from .variants import BASE, DOWNLOAD_PATTERNS, REAL_ARCH, TURBO, VARIANTS, Variant

IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")



RESIDENT_SETTING = "KIAPI_ERNIE_RESIDENT_QUANTIZE"


def resident_quantize(variant: Variant, settings: ErnieSettings, *, demo: bool,
                      budget_gb: float | None) -> tuple[int, str]:
    """(bits, who chose them) for the resident instance of ``variant``.

    The setting wins; otherwise the budget decides: the largest of 8/6/5/4/3 bits that leaves
    room for a 1024^2 job of this variant (on a 16 GB Mac q8 weights alone, 11.5 GB, exceed
    the 10.67 GB budget). Demo models are tiny: 8.
    """
    if settings.resident_quantize is not None:
        return settings.resident_quantize, RESIDENT_SETTING
    if demo or budget_gb is None:
        return 8, "default"
    bits = memory.choose_resident_quantize(budget_gb, variant.steps, variant.guidance)
    return bits, f"memory budget {budget_gb:.2f} GB"


def _model(variant: Variant, *, default: bool, resident_quantize: int, demo: bool, chosen_by: str = "default") -> Model:
    return Model(
        name=variant.name,
        aliases=variant.aliases,
        default=default,
        features=("text", "image"),
        description=variant.description,
        loader="kiapi_ernie.runtime:load",
        resident_quantize=resident_quantize,
        weights_gib=dict(memory.DEMO_WEIGHTS_GB if demo else memory.WEIGHTS_GB),
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
        info={"repo": variant.repo, "mflux_model": variant.mflux_name, "steps": variant.steps,
              "guidance": variant.guidance, "resident_quantize_chosen_by": chosen_by,
              "resident_quantize_setting": RESIDENT_SETTING},
    )


def smoke_test(model: Model, demo: bool = False) -> tuple[str, dict]:
    """The smallest real request, run by ``kiapi check``: one step at 256 px (64 px in demo)."""
    size = 64 if demo else 256
    return "generate", {"model": model.name, "prompt": "a tiny blue cube on a white table",
                        "width": size, "height": size, "steps": 1, "seed": 1}


#: A rank-16 attention + text_proj adapter over 36 blocks, as /train writes it (f32): ~75 MB.
TYPICAL_LORA_MB = 75.0


def memory_examples(model: Model) -> list[tuple[str, str, dict]]:
    """Typical requests with their resolved params, for ``kiapi models --budget-gb`` and the
    per-Mac table in docs/memory.md."""
    variant = VARIANTS[model.name]
    image = {"model": variant.name, "steps": variant.steps, "guidance": variant.guidance, "quantize": None}
    examples: list[tuple[str, str, dict]] = [
        (f"generate {side}x{side}", "generate", {**image, "width": side, "height": side}) for side in (512, 1024, 2048)]
    examples.append(("edit 1024x1024", "edit", {**image, "width": 1024, "height": 1024}))
    examples.append(("generate 1024x1024 + LoRA", "generate",
                     {**image, "width": 1024, "height": 1024, "lora_mb": TYPICAL_LORA_MB}))
    train = {"model": variant.name, "quantize": ErnieSettings().train_quantize, "max_resolution": 512, "batch_size": 1,
             "lora_layers": {"targets": default_lora_targets(16, False, REAL_ARCH.layers)}}
    examples.append(("train 512 (low_ram)", "train", {**train, "low_ram": True}))
    examples.append(("train 512", "train", {**train, "low_ram": False}))
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
                prepare=validation.prepare_generate, check=validation.check_generate,
                inputs={"loras[].file": "file"}, estimate=memory.estimate_generate, produces=IMAGE_TYPES,
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
        memory_examples=memory_examples,
    )


#: The declaration with default settings and no budget (resident quantization 8).
CAPABILITY = build_capability()
