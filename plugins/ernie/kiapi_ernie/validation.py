"""Request validation and parameter resolution for the ernie operations.

``prepare_*`` run on the event loop before anything is queued: they apply every rule of the
operation (422 :class:`InvalidRequest` listing each problem with its fix, collected with the
SDK's :class:`~kiapi_core.sdk.Problems`), fill in the variant defaults, draw a seed when
none was given and return the params Struct the job records (:mod:`kiapi_ernie.params`).
``check_*`` run in a thread once FileRefs are resolved: LoRA files must be safetensors within
the size cap whose tensors fit the model (:mod:`kiapi_ernie.loras`), a training dataset must be
a safe ZIP of captioned images (400 listing every problem). They return new params (the Structs
are frozen) naming the stored inputs' file ids. Nothing here imports mlx or mflux.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec

from kiapi_core.sdk import (
    InvalidInput,
    MemoryBudgetExceeded,
    Problems,
    RequestContext,
    ref_summary,
    resolve_quantize,
    resolve_seed,
)

from . import dataset, loras, memory, trainconfig
from .params import EditParams, GenerateParams, LoraParams, TrainParams
from .schemas import EditRequest, GenerateRequest, TrainRequest
from .settings import ErnieSettings, settings_of
from .variants import VARIANTS, Variant, arch, num_layers

#: Schedulers mflux registers by name; anything else would make mflux import a module by path.
SCHEDULERS = ("linear", "flow_match_euler_discrete")

#: Training falls back to this ``max_resolution`` when the request sends null (the spec default).
DEFAULT_TRAIN_RESOLUTION = 512


def _size(p: Problems, name: str, value: int, cap: int) -> None:
    """Bounds first (positive, at most the cap), then the multiple-of-16 rule with in-range hints."""
    setting = f"KIAPI_ERNIE_MAX_{name.upper()}"
    if value <= 0:
        p.add(name, f"{name} must be a positive multiple of 16 (got {value}); e.g. 512 or 1024")
    elif value > cap:
        top = cap // 16 * 16
        p.add(name, f"{name} {value} exceeds the cap {cap}; use at most {top} ({setting} raises the cap)")
    elif value % 16:
        options = [v for v in (value // 16 * 16, value // 16 * 16 + 16) if 16 <= v <= cap]
        p.add(name, f"{name} must be a multiple of 16 (got {value}); use {' or '.join(map(str, options))}")


# --- generate / edit --------------------------------------------------------------------


def _image_params(request: GenerateRequest | EditRequest, ctx: RequestContext, p: Problems, *,
                  kind: str) -> GenerateParams:
    """The fields generate and edit share, resolved; each problem is added to ``p`` (the caller
    raises them all at once, before the params are used)."""
    settings, model = settings_of(ctx.settings), ctx.model
    variant: Variant = VARIANTS[model.name]

    if not request.prompt or not request.prompt.strip():
        p.add("prompt", "prompt is empty; describe the image you want, e.g. \"a red apple on a table\"")
    width = settings.default_width if request.width is None else request.width
    height = settings.default_height if request.height is None else request.height
    _size(p, "width", width, settings.max_width)
    _size(p, "height", height, settings.max_height)
    steps = variant.steps if request.steps is None else request.steps
    if not 1 <= steps <= settings.max_steps:
        p.add("steps", f"steps must be in 1..{settings.max_steps} (got {steps}); omit it for the "
                       f"{variant.name} default of {variant.steps}")
    # Any finite guidance >= 0 runs (mflux: <= 1 is one pass without CFG, > 1 is CFG, also on
    # the guidance-distilled turbo); the handler warns when the value is ignored or unusual.
    guidance = variant.guidance if request.guidance is None else float(request.guidance)
    if not math.isfinite(guidance) or guidance < 0:
        p.add("guidance", f"guidance must be a finite number >= 0 (got {request.guidance}); "
                          f"omit it for the {variant.name} default of {variant.guidance}")
    seed = resolve_seed(request.seed, p)
    resident = model.resident_quantize
    quantize = resolve_quantize(request.quantize, resident, p)
    if request.scheduler not in SCHEDULERS:
        p.add("scheduler", f"scheduler {request.scheduler!r} is not supported; use 'linear' (the default)")
    if request.format not in ("png", "jpeg", "webp"):
        p.add("format", f"format must be png, jpeg or webp (got {request.format!r})")
    if not 1 <= request.quality <= 100:
        p.add("quality", f"quality must be in 1..100 (got {request.quality}); 90 is a good default")
    lora_refs = list(request.loras or ())
    if len(lora_refs) > settings.max_loras:
        p.add("loras", f"at most {settings.max_loras} loras may be applied (got {len(lora_refs)}); "
                       f"drop {len(lora_refs) - settings.max_loras} of them")
    for i, lora in enumerate(lora_refs):
        if not math.isfinite(lora.scale) or abs(lora.scale) > 100:
            p.add(f"loras[{i}].scale", f"loras[{i}].scale must be a finite number in -100..100 "
                                       f"(got {lora.scale}); 1.0 applies the adapter at full weight")
    return GenerateParams(
        kind=kind, model=variant.name, prompt=request.prompt, negative_prompt=request.negative_prompt,
        seed=seed or 0,  # None only with a seed problem in p, raised before these params are used
        width=width, height=height, steps=steps, guidance=guidance, quantize=quantize,
        scheduler=request.scheduler, format=request.format, quality=request.quality,
        loras=[LoraParams(file=ref_summary(lora.file), scale=lora.scale) for lora in lora_refs],
        transient=quantize != resident, demo=True if ctx.demo else None, note=ctx.demo_note,
    )


def prepare_generate(request: GenerateRequest, ctx: RequestContext) -> GenerateParams:
    """Every rule of ``/generate`` (one 422 listing each problem), the variant's defaults filled
    in and a seed drawn when none was given."""
    p = Problems()
    params = _image_params(request, ctx, p, kind="txt2img")
    p.raise_if_any()
    return params


def prepare_edit(request: EditRequest, ctx: RequestContext) -> EditParams:
    """As :func:`prepare_generate`, plus ``image_strength`` and the optional square-size guard."""
    settings, p = settings_of(ctx.settings), Problems()
    shared = _image_params(request, ctx, p, kind="edit")
    strength = request.image_strength
    if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
        p.add("image_strength", f"image_strength must be in 0..1 (got {strength}); 0.4 is the default")
    if settings.edit_require_square and shared.width != shared.height:
        p.add("width", f"ERNIE edit requires a square size by default (got {shared.width}x{shared.height}); use "
                       "equal width and height, or set KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=0 to lift this guard")
    p.raise_if_any()
    return EditParams(**msgspec.structs.asdict(shared), image=ref_summary(request.image), image_strength=strength)


def guidance_warnings(params: GenerateParams) -> list[str]:
    """What the client should know about how mflux treats the resolved guidance."""
    variant, guidance = VARIANTS[params.model], params.guidance
    notes = []
    if variant.guidance_distilled and guidance > 1.0:
        notes.append(f"guidance {guidance:g}: the {variant.name} model is guidance-distilled (tuned for 1.0); "
                     "values above 1 still run classifier-free guidance, with two transformer passes per step "
                     "(about twice the time) and usually over-saturated images. Omit guidance for "
                     f"{variant.name}, or use model 'base' for CFG")
    elif guidance < 1.0:
        notes.append(f"guidance {guidance:g} is below 1, which turns classifier-free guidance off: the run is "
                     "the same as with guidance 1.0")
    if params.negative_prompt and guidance <= 1.0:
        notes.append("negative_prompt only applies with guidance > 1 (classifier-free guidance); it was ignored")
    return notes


# --- LoRA files -------------------------------------------------------------------------


def _checked_loras(params: GenerateParams, ctx: RequestContext) -> dict[str, Any]:
    """400 for an adapter that would not apply; else the changes ``check`` makes: each adapter's
    stored file id and their total size (``lora_mb``: they join the loaded model, the estimate
    counts them)."""
    settings, demo = settings_of(ctx.settings), ctx.demo
    problems = Problems()
    total_bytes = 0
    for i in range(len(params.loras)):
        stored = ctx.inputs.get(f"loras[{i}].file")
        if stored is None:
            continue
        total_bytes += Path(stored.path).stat().st_size
        for detail in loras.lora_problems(Path(stored.path), max_bytes=int(settings.max_lora_mb * 2**20),
                                          what=f"loras[{i}].file", arch=arch(demo), demo=demo):
            problems.add(f"loras[{i}].file", detail)
    problems.raise_if_any(InvalidInput)
    if not params.loras:
        return {}
    file_ids = ctx.file_ids
    resolved = [msgspec.structs.replace(lora, file_id=file_ids.get(f"loras[{i}].file"))
                for i, lora in enumerate(params.loras)]
    return {"loras": resolved, "lora_mb": round(total_bytes / 2**20, 3) if total_bytes else None}


def check_generate(request: GenerateRequest, params: GenerateParams, ctx: RequestContext) -> GenerateParams:
    """New params with the adapters' file ids and size (``lora_mb``, for the estimate); 400 for
    a bad adapter."""
    return msgspec.structs.replace(params, **_checked_loras(params, ctx))


def check_edit(request: EditRequest, params: EditParams, ctx: RequestContext) -> EditParams:
    """As :func:`check_generate`, plus the stored input's file id (``image_file_id``) and the
    output size from the input's aspect ratio when the request leaves it open."""
    changes = _checked_loras(params, ctx)
    stored = ctx.inputs.get("image")
    settings = settings_of(ctx.settings)
    if stored is not None:
        changes["image_file_id"] = stored.file_id
        if (request.width is None or request.height is None) and not settings.edit_require_square:
            from PIL import Image

            with Image.open(stored.path) as image:
                size = image.size
            changes["width"], changes["height"] = edit_size(size, request.width, request.height, settings)
    return msgspec.structs.replace(params, **changes)


def edit_size(image_size: tuple[int, int], width: int | None, height: int | None,
              settings: ErnieSettings) -> tuple[int, int]:
    """The output size of an edit whose request omits width and/or height: the input's aspect
    ratio (mflux resizes the input to the output size without cropping, so any other ratio
    stretches it), in multiples of 16, at the default's pixel area when both are omitted."""
    in_w, in_h = max(1, image_size[0]), max(1, image_size[1])
    ratio = in_w / in_h

    def snap(value: float, cap: int) -> int:
        return int(min(max(16, round(value / 16) * 16), cap // 16 * 16))

    if width is None and height is None:
        area = settings.default_width * settings.default_height
        w = snap(math.sqrt(area * ratio), settings.max_width)
        return w, snap(w / ratio, settings.max_height)
    if width is None:
        assert height is not None
        return snap(height * ratio, settings.max_width), int(height)
    return int(width), snap(width / ratio, settings.max_height)


# --- train ------------------------------------------------------------------------------


def prepare_train(request: TrainRequest, ctx: RequestContext) -> TrainParams:
    """Every rule of ``/train`` (one 422 listing each problem), resolved to the configuration
    mflux runs: the variant's own schedule, the training quantization, the LoRA targets."""
    settings, demo = settings_of(ctx.settings), ctx.demo
    variant: Variant = VARIANTS[ctx.model.name]
    p = Problems()
    # mflux trains ERNIE on the model's own schedule (ModelConfig.lora_training_steps/guidance)
    # whatever the config says, so other values are accepted, recorded and warned about.
    steps, guidance = variant.train_steps, variant.train_guidance
    if request.steps is not None and not 1 <= request.steps <= settings.max_steps:
        p.add("steps", f"steps must be in 1..{settings.max_steps} (got {request.steps}); omit it: ERNIE "
                       f"training runs the {variant.name} schedule of {steps} steps")
    if request.guidance is not None and (not math.isfinite(request.guidance) or request.guidance < 0):
        p.add("guidance", f"guidance must be a finite number >= 0 (got {request.guidance}); omit it: ERNIE "
                          f"training of {variant.name} uses guidance {guidance}")
    seed = resolve_seed(request.seed, p)
    quantize = resolve_quantize(request.quantize, settings.train_quantize, p, default_means="training's default")
    cap = settings.max_train_resolution
    max_res = min(DEFAULT_TRAIN_RESOLUTION, cap) if request.max_resolution is None else request.max_resolution
    if not 16 <= max_res <= cap:
        p.add("max_resolution", f"max_resolution must be in 16..{cap} (got {max_res}); "
                                f"{DEFAULT_TRAIN_RESOLUTION} is the default (KIAPI_ERNIE_MAX_TRAIN_RESOLUTION "
                                "sets the cap)")
    low = 1 if request.timestep_low is None else request.timestep_low
    high = steps if request.timestep_high is None else request.timestep_high
    if not 0 <= low < high <= steps:
        p.add("timestep_low", f"timesteps must satisfy 0 <= timestep_low < timestep_high <= {steps}, the "
                              f"{variant.name} training schedule (got {low}..{high}); omit both for 1..{steps}")
    _check_train_loop(request, settings, p)
    targets = _lora_targets(request, settings, num_layers(demo), p)
    p.raise_if_any()
    return TrainParams(
        kind="lora_train", model=variant.name, dataset=ref_summary(request.dataset),
        seed=seed or 0,  # None only with a seed problem, raised above
        steps=steps, guidance=guidance, quantize=quantize, max_resolution=max_res, low_ram=request.low_ram,
        num_epochs=request.num_epochs, batch_size=request.batch_size, timestep_low=low, timestep_high=high,
        learning_rate=request.learning_rate, save_frequency=request.save_frequency, lora_rank=request.lora_rank,
        lora_include_ff=request.lora_include_ff, lora_layers={"targets": targets},
        lora_layers_custom=request.lora_layers is not None,
        requested_steps=request.steps if request.steps is not None and request.steps != steps else None,
        requested_guidance=(request.guidance if request.guidance is not None and request.guidance != guidance
                            else None),
        demo=True if demo else None, note=ctx.demo_note,
    )


def _check_train_loop(request: TrainRequest, settings: ErnieSettings, p: Problems) -> None:
    """The optimizer and loop fields: learning rate, epochs, batch size, checkpoints, rank."""
    lr = request.learning_rate
    if not math.isfinite(lr) or not 0 < lr <= 1:
        p.add("learning_rate", f"learning_rate must be in (0, 1] (got {lr}); 1e-4 is the default")
    if not 1 <= request.num_epochs <= settings.max_train_epochs:
        p.add("num_epochs", f"num_epochs must be in 1..{settings.max_train_epochs} (got {request.num_epochs}); "
                            "KIAPI_ERNIE_MAX_TRAIN_EPOCHS sets the cap")
    if not 1 <= request.batch_size <= settings.max_train_batch_size:
        p.add("batch_size", f"batch_size must be in 1..{settings.max_train_batch_size} (got {request.batch_size}); "
                            "KIAPI_ERNIE_MAX_TRAIN_BATCH_SIZE sets the cap")
    if request.save_frequency is not None and request.save_frequency < 1:
        p.add("save_frequency", f"save_frequency must be >= 1 step (got {request.save_frequency}); "
                                "omit it to keep only the final checkpoint")
    if not 1 <= request.lora_rank <= settings.max_lora_rank:
        p.add("lora_rank", f"lora_rank must be in 1..{settings.max_lora_rank} (got {request.lora_rank}); "
                           "16 is the default")


def _lora_targets(request: TrainRequest, settings: ErnieSettings, layers: int, p: Problems) -> list[dict[str, Any]]:
    """The request's own ``lora_layers`` targets, checked, or the defaults from rank/include_ff."""
    if request.lora_layers is None:
        return trainconfig.default_lora_targets(request.lora_rank, request.lora_include_ff, layers)
    targets, problems = trainconfig.validate_lora_layers(request.lora_layers, layers=layers,
                                                         max_rank=settings.max_lora_rank)
    for detail in problems:
        p.add("lora_layers", detail)
    return targets


def train_warnings(params: TrainParams) -> list[str]:
    """Requested schedule values mflux replaces with the variant's own (see :func:`prepare_train`)."""
    notes = []
    if params.requested_steps is not None:
        notes.append(f"steps {params.requested_steps} was not used: mflux trains ERNIE {params.model} "
                     f"on its own schedule of {params.steps} steps (params.steps)")
    if params.requested_guidance is not None:
        notes.append(f"guidance {params.requested_guidance:g} was not used: mflux trains ERNIE "
                     f"{params.model} with guidance {params.guidance:g} (params.guidance)")
    return notes


def train_memory_problem(params: TrainParams, budget_gb: float | None) -> MemoryBudgetExceeded | None:
    """A 503 naming the training set-up that fits when the requested one never can (else ``None``).

    Tried in order, nearest to the request first: ``low_ram: true``; then lower ``quantize``
    values with low_ram; then a smaller ``max_resolution`` at 4 bits with low_ram.
    """
    if budget_gb is None or params.demo:
        return None
    need = memory.train_gb(params)
    if need <= budget_gb:
        return None
    bits, side = params.quantize, params.max_resolution
    tries: list[tuple[str, dict[str, Any]]] = []
    if not params.low_ram:
        tries.append(("low_ram: true (gradient checkpointing; slower)", {"low_ram": True}))
    tries += [(f"quantize {q} with low_ram: true", {"low_ram": True, "quantize": q})
              for q in (6, 5, 4, 3) if bits is None or q < bits]
    tries += [(f"max_resolution {r} with quantize 4 and low_ram: true",
               {"low_ram": True, "quantize": min(4, bits or 4), "max_resolution": r})
              for r in (384, 256) if r < side]
    hint = "A machine with more memory (KIAPI_MEMORY_LIMIT_GB sets the budget) is needed for ERNIE training."
    suggestion = None
    for label, change in tries:
        gb = memory.train_gb(msgspec.structs.replace(params, **change))
        if gb <= budget_gb:
            hint, suggestion = f"Send {label}: it needs about {gb:.1f} GiB.", change
            break
    mode = "with low_ram (gradient checkpointing)" if params.low_ram else "without low_ram"
    detail = (f"ernie training {mode} at max_resolution {side}, batch_size {params.batch_size}, "
              f"quantize {bits} needs about {need:.1f} GiB but the memory budget is {budget_gb:.2f} GiB, so it can "
              f"never run here. {hint}")
    return MemoryBudgetExceeded(detail, needed_gb=round(need, 3), budget_gb=round(budget_gb, 3), hint=hint,
                                suggestion=suggestion,
                                low_ram_gb=round(memory.train_gb(params, low_ram=True), 3),
                                without_low_ram_gb=round(memory.train_gb(params, low_ram=False), 3))


def check_train(request: TrainRequest, params: TrainParams, ctx: RequestContext) -> TrainParams:
    """503 when the training can never fit the memory budget; 400/422 for the dataset. Returns
    the params with the stored dataset's file id."""
    problem = None if ctx.demo else train_memory_problem(params, ctx.limits.memory_budget_gb)
    if problem is not None:
        raise problem
    stored = ctx.inputs.get("dataset")
    if stored is None:
        return params
    settings = settings_of(ctx.settings)
    plan = dataset.inspect(Path(stored.path), dataset.Limits.from_settings(settings),
                           max_pixels=ctx.limits.max_image_pixels or dataset.DEFAULT_MAX_PIXELS,
                           max_resolution=params.max_resolution)
    check_train_size(params, plan.num_images, settings)
    return msgspec.structs.replace(params, dataset_file_id=stored.file_id)


def check_train_size(params: TrainParams, num_images: int, settings: ErnieSettings) -> None:
    """422 when the run would take more steps, or store more checkpoints, than allowed: a small
    dataset with huge ``num_epochs`` and ``save_frequency: 1`` would otherwise fill the disk."""
    batch_size, epochs = params.batch_size, params.num_epochs
    batches = -(-max(num_images, 1) // batch_size)
    total = batches * epochs
    p = Problems()
    if total > settings.max_train_steps:
        p.add("num_epochs", f"{epochs} epochs of {batches} batch(es) ({num_images} images, "
                            f"batch_size {batch_size}) is {total} steps, more than "
                            f"{settings.max_train_steps} (KIAPI_ERNIE_MAX_TRAIN_STEPS); lower num_epochs")
    every = params.save_frequency
    if every and total // every > settings.max_checkpoints:
        p.add("save_frequency", f"save_frequency {every} would store {total // every} checkpoints of this "
                                f"{total}-step run, more than {settings.max_checkpoints} "
                                f"(KIAPI_ERNIE_MAX_CHECKPOINTS); use save_frequency >= "
                                f"{-(-total // settings.max_checkpoints)} or omit it")
    p.raise_if_any()
