"""LoRA adapters on the resident model: applied for one job, then taken off again.

Building a model per LoRA request would read and requantize ~23 GB and hold a second copy of
the weights. Instead the adapters are wrapped around the resident transformer's Linear /
QuantizedLinear layers with mflux's own loader code (``LoRALoader`` with ``bake_lora=False``:
``LoRALinear`` / ``FusedLoRALinear`` wrappers, the base weights untouched) and unwrapped when
the job ends, whatever its outcome. The resident model is shared by every later job, so
:func:`applied` always leaves it exactly as it found it.

Parsed adapter files are cached per runtime by file id (:class:`AdapterCache`), so a warm
LoRA request reads no weights at all. Runs on the model thread only.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiapi_core.sdk import InvalidInput

from .loras import applied_shape_problems

#: Key endings of LoRA tensors (PEFT, kohya, ComfyUI); used to name what mflux did not apply.
_LORA_ENDINGS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_A.weight", "lora_B.weight",
                 "lora_down.weight", "lora_up.weight", "lora.down.weight", "lora.up.weight")


@dataclass
class Adapter:
    """One parsed adapter file: its tensors (MLX arrays) and safetensors metadata."""

    file_id: str
    weights: dict[str, Any]
    metadata: dict[str, str]
    nbytes: int


class AdapterCache:
    """Parsed adapters by file id, least recently used dropped first past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[str, Adapter] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # files read from disk (tests, metrics)

    def get(self, file_id: str, path: str | Path) -> tuple[Adapter, bool]:
        """The adapter of ``file_id`` and whether it came from the cache."""
        with self._lock:
            hit = self._items.get(file_id)
            if hit is not None:
                self._items.move_to_end(file_id)
                return hit, True
        adapter = read_adapter(file_id, path)
        self.loads += 1
        with self._lock:
            self._items[file_id] = adapter
            while self._items and sum(a.nbytes for a in self._items.values()) > self.max_bytes:
                self._items.popitem(last=False)  # the newest stays usable for this job
        return adapter, False

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._items.values())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def read_adapter(file_id: str, path: str | Path) -> Adapter:
    import mlx.core as mx

    try:
        loaded: Any
        metadata: Any
        loaded, metadata = mx.load(str(path), return_metadata=True)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"LoRA file {file_id} could not be read: {exc}") from exc
    weights = dict(loaded.items())
    mx.eval(list(weights.values()))
    return Adapter(file_id=file_id, weights=weights, metadata=dict(metadata or {}),
                   nbytes=sum(int(w.nbytes) for w in weights.values()))


def _apply_one(transformer: Any, adapter: Adapter, scale: float, mapping: list[Any]) -> list[str]:
    """Wrap the layers ``adapter`` names (mflux's own matching); returns its ignored LoRA keys."""
    from mflux.models.common.lora.mapping.lora_loader import LoRALoader
    from mflux.models.common.lora.mapping.peft_lora_metadata import PeftLoRAMetadata

    patterns = LoRALoader._build_pattern_mappings(mapping)
    try:
        applied, matched, failed = LoRALoader._apply_lora_with_mapping(
            transformer, adapter.weights, scale, patterns, role=None, bake_lora=False, direct_deltas=[],
            adapter_configs=PeftLoRAMetadata.configs(adapter.metadata))
    except ValueError as exc:  # two keys for one slot, .diff patches (need baking), bad LoKr
        raise InvalidInput(f"LoRA {adapter.file_id} does not fit the ernie model: {exc}") from exc
    if failed:
        raise InvalidInput(f"LoRA {adapter.file_id} names layers the ernie model lacks: {', '.join(failed[:5])}")
    if not applied:
        raise InvalidInput(f"LoRA {adapter.file_id} applies to no layer of the ernie model")
    return sorted(k for k in set(adapter.weights) - matched if k.endswith(_LORA_ENDINGS))


def strip(transformer: Any) -> int:
    """Replace every LoRA wrapper in ``transformer`` by the layer it wraps; returns how many."""
    from mflux.models.common.lora.layer.fused_linear_lora_layer import FusedLoRALinear
    from mflux.models.common.lora.layer.linear_lokr_layer import LoKrLinear
    from mflux.models.common.lora.layer.linear_lora_layer import LoRALinear
    from mflux.models.common.lora.mapping.lora_loader import LoRALoader

    wrappers = []
    for name, module in transformer.named_modules():
        if isinstance(module, FusedLoRALinear):
            wrappers.append((name, module.base_linear))
        elif isinstance(module, (LoRALinear, LoKrLinear)):
            wrappers.append((name, module.linear))
    outer = [(n, base) for n, base in wrappers
             if not any(n != other and n.startswith(other + ".") for other, _ in wrappers)]
    for name, base in outer:
        LoRALoader._replace_target_module(transformer, name, base)
    return len(outer)


@contextlib.contextmanager
def applied(transformer: Any, adapters: Sequence[Adapter], scales: Sequence[float]) -> Iterator[list[str]]:
    """Apply ``adapters`` at ``scales`` for the block; yields warnings (LoRA keys ignored).

    On any failure (here or in the block) the transformer is unwrapped before the error
    propagates, so a bad adapter never leaves the resident model changed.
    """
    from mflux.models.ernie_image.weights.ernie_lora_mapping import ErnieLoRAMapping

    mapping = ErnieLoRAMapping.get_mapping()
    warnings: list[str] = []
    try:
        for adapter, scale in zip(adapters, scales, strict=True):
            ignored = _apply_one(transformer, adapter, float(scale), mapping)
            if ignored:
                shown = ", ".join(ignored[:4]) + (f" and {len(ignored) - 4} more" if len(ignored) > 4 else "")
                warnings.append(f"LoRA {adapter.file_id}: {len(ignored)} tensor(s) were not applied, because "
                                f"mflux's ERNIE mapping has no layer for them ({shown}); text-encoder LoRAs and "
                                "diffusers' adaLN_modulation.1 names are not supported")
        misfits = applied_shape_problems(transformer)
        if misfits:
            raise InvalidInput("a LoRA does not fit the ernie model: " + "; ".join(misfits[:8]))
        yield warnings
    finally:
        strip(transformer)
