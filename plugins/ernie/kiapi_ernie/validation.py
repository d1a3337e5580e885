"""Request validation and parameter resolution for the ernie operations.

``prepare_*`` run on the event loop before anything is queued: they apply every rule of the
operation (422 :class:`InvalidRequest` listing each problem with its fix), fill in the variant
defaults, draw a seed when none was given and return the resolved ``params`` the job records.
``check_*`` run in a thread once FileRefs are resolved: LoRA files must be safetensors within
the size cap, a training dataset must be a safe ZIP of captioned images (400 listing every
problem). Nothing here imports mlx or mflux.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kiapi_core.errors import InvalidInput, InvalidRequest

from . import dataset, trainconfig
from .settings import QUANTIZE_CHOICES, ErnieSettings
from .variants import VARIANTS, Variant, num_layers

#: Schedulers mflux registers by name; anything else would make mflux import a module by path.
SCHEDULERS = ("linear", "flow_match_euler_discrete")
MAX_SEED = 2**63 - 1
_QUANTIZE_TEXT = ", ".join(str(q) for q in QUANTIZE_CHOICES)


def plugin_settings(host: Any) -> ErnieSettings:
    getter = getattr(host, "plugin_settings", None)
    settings = getter("ernie") if callable(getter) else None
    return settings if settings is not None else ErnieSettings()


def is_demo(host: Any) -> bool:
    return bool(getattr(getattr(host, "settings", None), "demo", False))


class _Problems:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, field: str, detail: str) -> None:
        self.items.append({"field": field, "detail": detail})

    def raise_if_any(self, error: type = InvalidRequest) -> None:
        if self.items:
            detail = "; ".join(item["detail"] for item in self.items)
            raise error(detail, errors=self.items)


def ref_summary(ref: Any) -> dict[str, Any]:
    """A FileRef as recorded in params: ids and URLs (without query/credentials), never data."""
    kind = getattr(ref, "type", None) or type(ref).__name__
    if hasattr(ref, "file_id"):
        return {"type": "file_id", "file_id": ref.file_id}
    if hasattr(ref, "url"):
        parts = urlsplit(ref.url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return {"type": "url", "url": f"{parts.scheme}://{host}{port}{parts.path}"}
    if hasattr(ref, "data_url"):
        head = ref.data_url[5:ref.data_url.find(",")] if ref.data_url.startswith("data:") else ""
        return {"type": "data_url", "media_type": head.split(";")[0] or None, "chars": len(ref.data_url)}
    return {"type": str(kind)}


# --- generate / edit --------------------------------------------------------------------


def _resolve_image_params(request: Any, model: Any, host: Any, *, kind: str) -> dict[str, Any]:
    settings, demo = plugin_settings(host), is_demo(host)
    variant: Variant = VARIANTS[model.name]
    p = _Problems()

    if not request.prompt or not request.prompt.strip():
        p.add("prompt", "prompt is empty; describe the image you want, e.g. \"a red apple on a table\"")
    width = settings.default_width if request.width is None else request.width
    height = settings.default_height if request.height is None else request.height
    for name, value, cap in (("width", width, settings.max_width), ("height", height, settings.max_height)):
        if value <= 0:
            p.add(name, f"{name} must be a positive multiple of 16 (got {value}); e.g. 512 or 1024")
        elif value % 16:
            lower = max(16, value // 16 * 16)
            p.add(name, f"{name} must be a multiple of 16 (got {value}); use {lower} or {lower + 16}")
        elif value > cap:
            p.add(name, f"{name} {value} exceeds the cap {cap}; use at most {cap} "
                        f"(KIAPI_ERNIE_MAX_{name.upper()} raises the cap)")
    steps = variant.steps if request.steps is None else request.steps
    if not 1 <= steps <= settings.max_steps:
        p.add("steps", f"steps must be in 1..{settings.max_steps} (got {steps}); omit it for the "
                       f"{variant.name} default of {variant.steps}")
    guidance = variant.guidance if request.guidance is None else float(request.guidance)
    if not math.isfinite(guidance) or guidance < 0:
        p.add("guidance", f"guidance must be a finite number >= 0 (got {request.guidance}); "
                          f"omit it for the {variant.name} default of {variant.guidance}")
    elif variant.fixed_guidance and guidance != variant.guidance:
        p.add("guidance", f"the {variant.name} model is guidance-distilled and only runs at guidance "
                          f"{variant.guidance} (got {guidance}); omit guidance, or use model 'base' for CFG")
    seed = request.seed
    if seed is None:
        seed = random.randint(0, 2**31 - 1)
    elif not 0 <= seed <= MAX_SEED:
        p.add("seed", f"seed must be in 0..{MAX_SEED} (got {seed}); omit it for a random seed")
    resident = getattr(model, "resident_quantize", settings.resident_quantize)
    quantize = resident if request.quantize is None else request.quantize
    if quantize not in QUANTIZE_CHOICES:
        p.add("quantize", f"quantize must be one of {_QUANTIZE_TEXT} (got {request.quantize}); "
                          f"omit it to use the resident model ({resident}-bit)")
    if request.scheduler not in SCHEDULERS:
        p.add("scheduler", f"scheduler {request.scheduler!r} is not supported; use 'linear' (the default)")
    if request.format not in ("png", "jpeg", "webp"):
        p.add("format", f"format must be png, jpeg or webp (got {request.format!r})")
    if not 1 <= request.quality <= 100:
        p.add("quality", f"quality must be in 1..100 (got {request.quality}); 90 is a good default")
    loras = list(request.loras or ())
    if len(loras) > settings.max_loras:
        p.add("loras", f"at most {settings.max_loras} loras may be applied (got {len(loras)}); "
                       f"drop {len(loras) - settings.max_loras} of them")
    for i, lora in enumerate(loras):
        if not math.isfinite(lora.scale) or abs(lora.scale) > 100:
            p.add(f"loras[{i}].scale", f"loras[{i}].scale must be a finite number in -100..100 "
                                       f"(got {lora.scale}); 1.0 applies the adapter at full weight")

    params: dict[str, Any] = {
        "kind": kind,
        "model": variant.name,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": seed,
        "width": width,
        "height": height,
        "steps": steps,
        "guidance": guidance,
        "quantize": quantize,
        "scheduler": request.scheduler,
        "format": request.format,
        "quality": request.quality,
        "loras": [{"file": ref_summary(lora.file), "scale": lora.scale} for lora in loras],
        "transient": bool(loras) or quantize != resident,
    }
    if kind == "edit":
        strength = request.image_strength
        if not math.isfinite(strength) or not 0.0 <= strength <= 1.0:
            p.add("image_strength", f"image_strength must be in 0..1 (got {strength}); 0.4 is the default")
        if settings.edit_require_square and width != height:
            p.add("width", f"ERNIE edit requires a square size by default (got {width}x{height}); use equal "
                           f"width and height, or set KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=0 to lift this guard")
        params["image"] = ref_summary(request.image)
        params["image_strength"] = strength
    if demo:
        params["demo"] = True
    p.raise_if_any()
    return params


def prepare_generate(request: Any, model: Any, host: Any) -> dict[str, Any]:
    return _resolve_image_params(request, model, host, kind="txt2img")


def prepare_edit(request: Any, model: Any, host: Any) -> dict[str, Any]:
    return _resolve_image_params(request, model, host, kind="edit")


# --- LoRA files -------------------------------------------------------------------------

_DTYPES = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
           "F32", "F64", "I64", "U64"}
_MAX_HEADER = 100 * 1024 * 1024


def safetensors_problems(path: Path, *, max_bytes: int, what: str) -> list[str]:
    """Why ``path`` is not a usable LoRA safetensors file (empty list when it is)."""
    size = path.stat().st_size
    if size > max_bytes:
        return [f"{what} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB cap "
                "(KIAPI_ERNIE_MAX_LORA_MB); send a smaller adapter"]
    fix = "send the .safetensors adapter file produced by /train or another ERNIE LoRA"
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return [f"{what} is not a safetensors file (only {size} bytes); {fix}"]
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(_MAX_HEADER, size - 8):
            return [f"{what} is not a safetensors file (bad header length); {fix}"]
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return [f"{what} is not a safetensors file (header is not JSON); {fix}"]
    if not isinstance(header, dict):
        return [f"{what} is not a safetensors file (header is not an object); {fix}"]
    data_len = size - 8 - length
    names = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = (isinstance(entry, dict) and entry.get("dtype") in _DTYPES and isinstance(entry.get("shape"), list)
              and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
              and all(isinstance(o, int) for o in entry["data_offsets"])
              and 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1] <= data_len)
        if not ok:
            return [f"{what} is a damaged safetensors file (tensor {name!r} is out of bounds); {fix}"]
        names.append(name)
    if not any(("lora_a" in n.lower() or "lora_down" in n.lower()) for n in names):
        return [f"{what} holds no LoRA tensors (lora_A/lora_B or lora_down/lora_up); {fix}"]
    return []


def _check_loras(request: Any, inputs: Any, host: Any) -> None:
    settings = plugin_settings(host)
    problems = _Problems()
    for i, _ in enumerate(request.loras or ()):
        stored = inputs.get(f"loras[{i}].file") if inputs is not None else None
        if stored is None:
            continue
        for detail in safetensors_problems(Path(stored.path), max_bytes=int(settings.max_lora_mb * 2**20),
                                           what=f"loras[{i}].file"):
            problems.add(f"loras[{i}].file", detail)
    problems.raise_if_any(InvalidInput)


def check_generate(request: Any, params: dict[str, Any], inputs: Any, host: Any) -> None:
    _check_loras(request, inputs, host)


def check_edit(request: Any, params: dict[str, Any], inputs: Any, host: Any) -> None:
    _check_loras(request, inputs, host)


# --- train ------------------------------------------------------------------------------


def prepare_train(request: Any, model: Any, host: Any) -> dict[str, Any]:
    settings, demo = plugin_settings(host), is_demo(host)
    variant: Variant = VARIANTS[model.name]
    p = _Problems()
    steps = variant.train_steps
    if request.steps is not None and request.steps != steps:
        p.add("steps", f"ERNIE LoRA training always runs the {variant.name} schedule of {steps} steps "
                       f"(mflux uses the model's training schedule); omit steps")
    guidance = variant.train_guidance
    if request.guidance is not None and request.guidance != guidance:
        p.add("guidance", f"ERNIE LoRA training of {variant.name} always uses guidance {guidance}; omit guidance")
    if not 0 <= request.seed <= MAX_SEED:
        p.add("seed", f"seed must be in 0..{MAX_SEED} (got {request.seed}); the default is 42")
    quantize = settings.train_quantize if request.quantize is None else request.quantize
    if quantize not in QUANTIZE_CHOICES:
        p.add("quantize", f"quantize must be one of {_QUANTIZE_TEXT} (got {request.quantize}); omit it for "
                          f"{settings.train_quantize}")
    max_res = settings.max_train_resolution if request.max_resolution is None else request.max_resolution
    if not 16 <= max_res <= settings.max_train_resolution:
        p.add("max_resolution", f"max_resolution must be in 16..{settings.max_train_resolution} (got "
                                f"{max_res}); 512 is the default")
    low = 1 if request.timestep_low is None else request.timestep_low
    high = steps if request.timestep_high is None else request.timestep_high
    if not 0 <= low < high <= steps:
        p.add("timestep_low", f"timesteps must satisfy 0 <= timestep_low < timestep_high <= {steps} (got "
                              f"{low}..{high}); omit both for 1..{steps}")
    lr = request.learning_rate
    if not math.isfinite(lr) or not 0 < lr <= 1:
        p.add("learning_rate", f"learning_rate must be in (0, 1] (got {lr}); 1e-4 is the default")
    if request.save_frequency is not None and request.save_frequency < 1:
        p.add("save_frequency", f"save_frequency must be >= 1 step (got {request.save_frequency}); "
                                "omit it to keep only the final checkpoint")
    if not 1 <= request.lora_rank <= settings.max_lora_rank:
        p.add("lora_rank", f"lora_rank must be in 1..{settings.max_lora_rank} (got {request.lora_rank}); "
                           "16 is the default")
    layers = num_layers(demo)
    if request.lora_layers is not None:
        targets, problems = trainconfig.validate_lora_layers(request.lora_layers, layers=layers,
                                                             max_rank=settings.max_lora_rank)
        for detail in problems:
            p.add("lora_layers", detail)
    else:
        targets = trainconfig.default_lora_targets(request.lora_rank, request.lora_include_ff, layers)
    params: dict[str, Any] = {
        "kind": "lora_train",
        "model": variant.name,
        "dataset": ref_summary(request.dataset),
        "seed": request.seed,
        "steps": steps,
        "guidance": guidance,
        "quantize": quantize,
        "max_resolution": max_res,
        "low_ram": request.low_ram,
        "num_epochs": request.num_epochs,
        "batch_size": request.batch_size,
        "timestep_low": low,
        "timestep_high": high,
        "learning_rate": lr,
        "save_frequency": request.save_frequency,
        "lora_rank": request.lora_rank,
        "lora_include_ff": request.lora_include_ff,
        "lora_layers": {"targets": targets},
        "lora_layers_custom": request.lora_layers is not None,
    }
    if demo:
        params["demo"] = True
    p.raise_if_any()
    return params


def check_train(request: Any, params: dict[str, Any], inputs: Any, host: Any) -> None:
    stored = inputs.get("dataset") if inputs is not None else None
    if stored is None:
        return
    dataset.inspect(Path(stored.path), dataset.Limits.from_settings(plugin_settings(host)))
