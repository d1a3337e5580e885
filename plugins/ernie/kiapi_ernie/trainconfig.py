"""The mflux LoRA-training configuration: default targets, target validation, the JSON file.

Pure data (no mlx/mflux import), so ``prepare_train`` can validate on the event loop.
Target module paths are relative to ``ErnieTransformer`` (what mflux's ``inject_lora_targets``
and ``ErnieTrainingAdapter.save_lora_adapter`` walk); a ``{block}`` placeholder is expanded over
``blocks`` (``range(start, end)`` or explicit ``indices``).
"""

from __future__ import annotations

import re
from typing import Any

from .params import TrainParams

ATTENTION = ("self_attention.to_q", "self_attention.to_k", "self_attention.to_v", "self_attention.to_out.0")
FEED_FORWARD = ("mlp.gate_proj", "mlp.up_proj", "mlp.linear_fc2")
GLOBAL_FF = ("time_embedding.linear_1", "time_embedding.linear_2", "adaln_modulation", "final_norm.linear")
GLOBAL = ("text_proj", *GLOBAL_FF, "final_linear")
_BLOCK_PATH = re.compile(r"^layers\.(\{block\}|\d+)\.(" + "|".join(re.escape(p) for p in ATTENTION + FEED_FORWARD) + r")$")


def default_lora_targets(rank: int, include_ff: bool, layers: int) -> list[dict[str, Any]]:
    """Attention q/k/v/out over every block plus text_proj; with ``include_ff`` also the MLP
    (gate/up/fc2) over every block, the time embedding, adaLN modulation and the final norm."""
    blocks = {"start": 0, "end": layers}
    per_block = ATTENTION + (FEED_FORWARD if include_ff else ())
    targets: list[dict[str, Any]] = [
        {"module_path": f"layers.{{block}}.{name}", "blocks": dict(blocks), "rank": rank} for name in per_block
    ]
    targets.append({"module_path": "text_proj", "rank": rank})
    if include_ff:
        targets.extend({"module_path": name, "rank": rank} for name in GLOBAL_FF)
    return targets


def _blocks_problem(blocks: Any, layers: int, where: str) -> str | None:
    if not isinstance(blocks, dict):
        return f"{where}.blocks must be {{\"start\": 0, \"end\": {layers}}} or {{\"indices\": [...]}}"
    if blocks.get("indices") is not None:
        indices = blocks["indices"]
        if (not isinstance(indices, list) or not indices
                or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < layers for i in indices)):
            return f"{where}.blocks.indices must be a non-empty list of block numbers in 0..{layers - 1}"
        return None
    start, end = blocks.get("start"), blocks.get("end")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= layers):
        return f"{where}.blocks needs 0 <= start < end <= {layers} (the model has {layers} blocks)"
    return None


def validate_lora_layers(spec: Any, *, layers: int, max_rank: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Check a user-supplied ``lora_layers`` spec; returns (normalised targets, problems)."""
    example = f'{{"targets": [{{"module_path": "layers.{{block}}.self_attention.to_q", "blocks": {{"start": 0, "end": {layers}}}, "rank": 16}}]}}'
    if not isinstance(spec, dict) or not isinstance(spec.get("targets"), list) or not spec["targets"]:
        return [], [f"lora_layers must be an object with a non-empty targets list, e.g. {example}"]
    unknown = sorted(set(spec) - {"targets"})
    problems = [f"lora_layers has unknown keys {unknown}; only targets is supported"] if unknown else []
    targets: list[dict[str, Any]] = []
    for i, target in enumerate(spec["targets"]):
        where = f"lora_layers.targets[{i}]"
        if not isinstance(target, dict):
            problems.append(f"{where} must be an object like {example}")
            continue
        extra = sorted(set(target) - {"module_path", "rank", "blocks", "alpha"})
        if extra:
            problems.append(f"{where} has unknown keys {extra}; use module_path, rank, blocks, alpha")
        path, rank, blocks, alpha = (target.get(k) for k in ("module_path", "rank", "blocks", "alpha"))
        if not isinstance(path, str) or not (path in GLOBAL or _BLOCK_PATH.match(path)):
            problems.append(f"{where}.module_path {path!r} is not an ERNIE LoRA target; use "
                            f"layers.{{block}}.<{'|'.join(ATTENTION + FEED_FORWARD)}> or one of {', '.join(GLOBAL)}")
            continue
        templated = "{block}" in path
        if templated and blocks is None:
            problems.append(f"{where}.module_path uses {{block}}, so it needs blocks, e.g. {{\"start\": 0, \"end\": {layers}}}")
        elif not templated and blocks is not None:
            problems.append(f"{where}.blocks only applies to module paths with a {{block}} placeholder")
        elif templated and (problem := _blocks_problem(blocks, layers, where)):
            problems.append(problem)
        match = _BLOCK_PATH.match(path)
        if match and match.group(1) != "{block}" and int(match.group(1)) >= layers:
            problems.append(f"{where}.module_path names block {match.group(1)}, but the model has {layers} blocks")
        if not (isinstance(rank, int) and not isinstance(rank, bool) and 1 <= rank <= max_rank):
            problems.append(f"{where}.rank must be an integer in 1..{max_rank}")
        if alpha is not None and not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0):
            problems.append(f"{where}.alpha must be a positive number (or omitted)")
        clean: dict[str, Any] = {"module_path": path, "rank": rank}
        if blocks is not None:
            clean["blocks"] = blocks
        if alpha is not None:
            clean["alpha"] = alpha
        targets.append(clean)
    return targets, problems


def build_config(params: TrainParams, *, mflux_name: str, model_path: str | None, data: str,
                 output_path: str) -> dict[str, Any]:
    """The JSON mflux's ``TrainingRunner`` reads (``data`` is relative to the config file).

    No ``monitoring`` block: previews would generate full images during training and the loss
    plot needs nothing we serve; the plugin reports loss per step itself.
    """
    return {
        "model": mflux_name,
        "model_path": model_path,
        "data": data,
        "seed": params.seed,
        "steps": params.steps,
        "guidance": params.guidance,
        "quantize": params.quantize,
        "max_resolution": params.max_resolution,
        "low_ram": params.low_ram,
        # low_ram also checkpoints each block: it keeps its input only, ~25x less than the ~0.2 MB
        # per token a block keeps otherwise, and the rest is recomputed (see memory.train_gb).
        "gradient_checkpointing": params.low_ram,
        "training_loop": {
            "num_epochs": params.num_epochs,
            "batch_size": params.batch_size,
            "timestep_low": params.timestep_low,
            "timestep_high": params.timestep_high,
        },
        "optimizer": {"name": "AdamW", "learning_rate": params.learning_rate},
        # Without save_frequency only the final checkpoint is kept.
        "checkpoint": {"output_path": output_path, "save_frequency": params.save_frequency or 10**9},
        "lora_layers": {"targets": params.targets},
    }


def count_modules(targets: list[dict[str, Any]]) -> int:
    """How many Linear layers the targets wrap (a ``{block}`` target counts once per block)."""
    total = 0
    for target in targets:
        blocks = target.get("blocks")
        if blocks is None:
            total += 1
        elif blocks.get("indices") is not None:
            total += len(blocks["indices"])
        else:
            total += int(blocks["end"]) - int(blocks["start"])
    return total


def expand_targets(targets: list[dict[str, Any]]) -> list[tuple[str, int, float | None]]:
    """(module path, rank, alpha) of every Linear the targets wrap, ``{block}`` expanded."""
    out: list[tuple[str, int, float | None]] = []
    for target in targets:
        blocks = target.get("blocks")
        if blocks is None:
            indices: list[int | None] = [None]
        elif blocks.get("indices") is not None:
            indices = list(blocks["indices"])
        else:
            indices = list(range(int(blocks["start"]), int(blocks["end"])))
        for index in indices:
            path = target["module_path"] if index is None else target["module_path"].replace("{block}", str(index))
            out.append((path, int(target["rank"]), target.get("alpha")))
    return out
