"""LoRA adapter files: will this safetensors file apply to ERNIE-Image? Answered from its header.

:func:`lora_problems` runs in ``check_generate``/``check_edit`` (before queueing, no mlx): it
parses the safetensors header (size-capped, every tensor in bounds), then maps each tensor name
the way mflux 0.24.0's ``ErnieLoRAMapping`` + ``LoRALoader`` do and compares the shapes with
the transformer's Linear layers (:class:`~kiapi_ernie.variants.Arch`). Everything that would make
mflux fail (no tensor it recognises, a block the model lacks, lora_A without lora_B, a rank or
width that does not fit, DoRA, two names for one slot) is listed, so the client gets one 400
instead of a 500 from ``[matmul]`` halfway through a run. Names mflux does not recognise are
ignored, as mflux ignores them, as long as at least one layer applies.

:func:`applied_shape_problems` is the backstop after mflux built a model with LoRAs: it walks
the LoRA layers mflux inserted and compares them with the layers they wrap.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

from .trainconfig import ATTENTION, FEED_FORWARD
from .variants import Arch

_DTYPES = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
           "F32", "F64", "I64", "U64"}
_MAX_HEADER = 100 * 1024 * 1024
_MAX_LISTED = 8
FIX = "send the .safetensors adapter file produced by /train or another ERNIE-Image LoRA"

_GLOBAL_PATHS = ("text_proj", "time_embedding.linear_1", "time_embedding.linear_2", "adaln_modulation",
                 "final_norm.linear", "final_linear")
_BLOCK_PATHS = ATTENTION + FEED_FORWARD
#: kohya/ComfyUI names (``lora_unet_<name>``) of the same modules, as ErnieLoRAMapping spells them.
_KOHYA_GLOBAL = {"adaLN_modulation_1": "adaln_modulation", "time_embedding_linear_1": "time_embedding.linear_1",
                 "time_embedding_linear_2": "time_embedding.linear_2", "final_norm_linear": "final_norm.linear",
                 "text_proj": "text_proj", "final_linear": "final_linear"}
_KOHYA_BLOCK = {p.replace(".", "_"): p for p in _BLOCK_PATHS}
_PEFT_BLOCK = re.compile(r"^layers\.(0|[1-9]\d*)\.(" + "|".join(map(re.escape, _BLOCK_PATHS)) + r")$")
_KOHYA_BLOCK_RE = re.compile(r"^layers_(0|[1-9]\d*)_(" + "|".join(map(re.escape, _KOHYA_BLOCK)) + r")$")
_PEFT_ROLES = {"lora_A": "down", "lora_B": "up"}
_KOHYA_ROLES = {"lora_down": "down", "lora_up": "up"}


def read_header(path: Path, *, max_bytes: int, what: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The safetensors header of ``path`` (tensor name -> entry), or why it is not one."""
    size = path.stat().st_size
    if size > max_bytes:
        return None, [f"{what} is {size / 2**20:.0f} MiB, over the {max_bytes / 2**20:.0f} MiB cap "
                      "(KIAPI_ERNIE_MAX_LORA_MB); send a smaller adapter"]
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None, [f"{what} is not a safetensors file (only {size} bytes); {FIX}"]
        (length,) = struct.unpack("<Q", head)
        if length < 2 or length > min(_MAX_HEADER, size - 8):
            return None, [f"{what} is not a safetensors file (bad header length); {FIX}"]
        raw = fh.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, [f"{what} is not a safetensors file (header is not JSON); {FIX}"]
    if not isinstance(header, dict):
        return None, [f"{what} is not a safetensors file (header is not an object); {FIX}"]
    data_len = size - 8 - length
    tensors: dict[str, Any] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        ok = (isinstance(entry, dict) and entry.get("dtype") in _DTYPES and isinstance(shape, list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
              and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
              and 0 <= offsets[0] <= offsets[1] <= data_len)
        if not ok:
            return None, [f"{what} is a damaged safetensors file (tensor {name!r} is out of bounds); {FIX}"]
        tensors[name] = entry
    return tensors, []


def parse_key(key: str) -> tuple[str, str] | None:
    """``(module path, role)`` mflux maps ``key`` to (role ``down``/``up``/``alpha``), or ``None``."""
    stem, _, last = key.rpartition(".")
    if last == "weight":  # "...lora_A.weight" and the bare "...lora_A" name the same tensor
        stem, _, last = stem.rpartition(".")
        if last not in _PEFT_ROLES and last not in _KOHYA_ROLES:
            return None
    if stem.startswith("lora_unet_"):
        role = _KOHYA_ROLES.get(last) or ("alpha" if last == "alpha" else None)
        name = stem[len("lora_unet_"):]
        if role is None:
            return None
        if name in _KOHYA_GLOBAL:
            return _KOHYA_GLOBAL[name], role
        match = _KOHYA_BLOCK_RE.match(name)
        return (f"layers.{match.group(1)}.{_KOHYA_BLOCK[match.group(2)]}", role) if match else None
    role = _PEFT_ROLES.get(last) or ("alpha" if last == "alpha" else None)
    if role is None:
        return None
    for prefix in ("transformer.", "diffusion_model."):
        if stem.startswith(prefix):
            path = stem[len(prefix):]
            if path in _GLOBAL_PATHS or _PEFT_BLOCK.match(path):
                return path, role
            return None
    return (stem, role) if _PEFT_BLOCK.match(stem) else None


def module_dims(path: str, arch: Arch) -> tuple[int, int] | None:
    """(in, out) features of the Linear at ``path`` of the transformer, ``None`` if it has none."""
    h, f = arch.hidden, arch.ffn
    fixed = {"text_proj": (arch.text_in, h), "time_embedding.linear_1": (h, h), "time_embedding.linear_2": (h, h),
             "adaln_modulation": (h, 6 * h), "final_norm.linear": (h, 2 * h), "final_linear": (h, arch.out_channels)}
    if path in fixed:
        return fixed[path]
    match = _PEFT_BLOCK.match(path)
    if not match or int(match.group(1)) >= arch.layers:
        return None
    name = match.group(2)
    if name in ("mlp.gate_proj", "mlp.up_proj"):
        return h, f
    if name == "mlp.linear_fc2":
        return f, h
    return h, h


def fit_problems(tensors: dict[str, Any], arch: Arch, *, what: str, model: str) -> list[str]:
    """Why the adapter's tensors would not apply to a transformer of ``arch`` (empty: they do)."""
    shape_of = {name: list(entry["shape"]) for name, entry in tensors.items()}
    dora = [n for n in shape_of if n.endswith(".dora_scale") or "lora_magnitude_vector" in n.split(".")]
    if dora:
        return [f"{what} is a DoRA adapter ({dora[0]}); mflux applies plain LoRA only; {FIX}"]
    targets: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for name in sorted(shape_of):
        parsed = parse_key(name)
        if parsed is None:
            continue
        path, role = parsed
        slot = targets.setdefault(path, {})
        if role in slot:
            problems.append(f"{slot[role]} and {name} both name {path} {role}; keep one")
        slot[role] = name
    if not targets:
        seen = ", ".join(sorted(shape_of)[:3]) or "none"
        return [f"{what} holds no ERNIE-Image LoRA tensors (names such as "
                f"transformer.layers.0.self_attention.to_q.lora_A.weight or lora_unet_layers_0_self_attention_to_q"
                f".lora_down.weight; the file has {seen}); it was made for another model; {FIX}"]
    for path, slot in targets.items():
        dims = module_dims(path, arch)
        if dims is None:
            problems.append(f"{path}: {model} has {arch.layers} blocks (layers.0 .. layers.{arch.layers - 1})")
            continue
        fan_in, fan_out = dims
        if "down" not in slot or "up" not in slot:
            have, need = ("lora_A/down", "lora_B/up") if "down" in slot else ("lora_B/up", "lora_A/down")
            if "down" in slot or "up" in slot:
                problems.append(f"{path} has {have} but no {need}")
            else:
                problems.append(f"{path} has only an alpha, no lora_A/lora_B")
            continue
        down, up = shape_of[slot["down"]], shape_of[slot["up"]]
        if len(down) != 2 or down[1] != fan_in:
            problems.append(f"{slot['down']} is {down}, but {path} takes {fan_in} inputs in {model}: "
                            f"expected [rank, {fan_in}]")
            continue
        rank = down[0]
        if up != [fan_out, rank]:
            problems.append(f"{slot['up']} is {up}, but {path} has {fan_out} outputs in {model} and the "
                            f"adapter's rank is {rank}: expected [{fan_out}, {rank}]")
        if "alpha" in slot and _numel(shape_of[slot["alpha"]]) != 1:
            problems.append(f"{slot['alpha']} must be a single number, it is {shape_of[slot['alpha']]}")
    if problems:
        shown = "; ".join(problems[:_MAX_LISTED])
        more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        return [f"{what} does not fit {model}: {shown}{more}. Use an adapter trained for ERNIE-Image "
                f"({FIX})"]
    return []


def _numel(shape: list[int]) -> int:
    total = 1
    for dim in shape:
        total *= dim
    return total


def describe(arch: Arch, demo: bool) -> str:
    what = "the tiny demo ERNIE-Image model" if demo else "ERNIE-Image"
    return f"{what} ({arch.layers} blocks, hidden {arch.hidden}, ffn {arch.ffn}, text_in {arch.text_in})"


def lora_problems(path: Path, *, max_bytes: int, what: str, arch: Arch, demo: bool) -> list[str]:
    """Everything that stops the adapter at ``path`` from applying (empty list when it applies)."""
    tensors, problems = read_header(path, max_bytes=max_bytes, what=what)
    if tensors is None:
        return problems
    return fit_problems(tensors, arch, what=what, model=describe(arch, demo))


def quantized_input_width(packed_cols: int, bits: int) -> int:
    """A QuantizedLinear's input width from its packed ``uint32`` columns: ``cols * 32 / bits``.

    ``cols * (32 // bits)`` (what mflux 0.24's ``LoRALinear.from_linear`` computes) is exact only
    for 2, 4 and 8 bits: 3-, 5- and 6-bit weights straddle the 32-bit words.
    """
    return packed_cols * 32 // bits


def applied_shape_problems(transformer: Any) -> list[str]:
    """After mflux inserted LoRA layers: every one whose matrices do not fit the layer it wraps."""
    problems = []
    for name, module in transformer.named_modules():
        loras = getattr(module, "loras", None)
        for lora in (loras if isinstance(loras, list) else [module]):
            a, b, base = getattr(lora, "lora_A", None), getattr(lora, "lora_B", None), getattr(lora, "linear", None)
            weight = getattr(base, "weight", None)
            if a is None or b is None or weight is None:
                continue
            fan_out, fan_in = weight.shape
            bits = getattr(base, "bits", None)
            if bits:
                fan_in = quantized_input_width(fan_in, bits)
            if tuple(a.shape) != (fan_in, a.shape[-1]) or tuple(b.shape) != (a.shape[-1], fan_out):
                problems.append(f"{name}: the layer is {fan_in}->{fan_out}, the adapter's matrices are "
                                f"{list(a.shape)} and {list(b.shape)}")
    return problems
