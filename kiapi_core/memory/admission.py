"""Pure admission arithmetic: what a job needs, which idle models to evict, and the 503 body.

Nothing here holds state or locks; :mod:`kiapi_core.memory.manager` calls these under its lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import MemoryBudgetExceeded

#: Resident cache key: (family, model name, quantize bits or None).
Key = tuple[str, str, "int | None"]


def job_quantize(model: Any, params: Mapping[str, Any]) -> int | None:
    """The quantization a request runs at: its ``quantize`` parameter, else the resident one.

    ``quantize: null`` means "the server default", as in the wire contract.
    """
    value = params.get("quantize") if params else None
    return model.resident_quantize if value is None else value


def declared_weights_gb(model: Any, quantize: int | None) -> float:
    """Resident weight size the plugin declares for ``quantize``.

    Falls back, conservatively, to the unquantized size and then to the largest declared size,
    so an undeclared quantization never counts as free.
    """
    weights: Mapping[int | None, float] = model.weights_gib or {}
    if quantize in weights:
        return float(weights[quantize])
    if None in weights:
        return float(weights[None])
    return float(max(weights.values())) if weights else 0.0


@dataclass(frozen=True)
class Candidate:
    """An idle resident that may be evicted."""

    key: Key
    gb: float
    priority: int
    last_used: float


def eviction_order(candidates: Iterable[Candidate]) -> list[Candidate]:
    """Lowest priority first, then least recently used."""
    return sorted(candidates, key=lambda c: (c.priority, c.last_used))


def plan_eviction(candidates: Iterable[Candidate], *, used_gb: float, needed_gb: float,
                  budget_gb: float) -> list[Candidate] | None:
    """The shortest prefix of :func:`eviction_order` after which ``needed_gb`` fits.

    ``[]`` when it fits already, ``None`` when it cannot fit even with every candidate evicted
    (in which case the caller must evict nothing).
    """
    victims: list[Candidate] = []
    excess = used_gb + needed_gb - budget_gb
    for candidate in eviction_order(candidates):
        if excess <= _EPS:
            break
        victims.append(candidate)
        excess -= candidate.gb
    return victims if excess <= _EPS else None


# Float sums of GB figures must not refuse a job that fits exactly.
_EPS = 1e-9


def refusal(*, capability: Any, model: Any, quantize: int | None, estimate_gb: float,
            weights_gb: float, budget_gb: float, resident_gb: float, freeable_gb: float,
            reserved_gb: float, now: bool) -> MemoryBudgetExceeded:
    """The 503 for a job that does not fit, with the numbers and a hint a user can act on.

    ``now`` distinguishes "not now" (other jobs' reservations or models in use hold memory)
    from "never" (the job alone exceeds the budget).
    """
    needed = estimate_gb + weights_gb
    family = getattr(capability, "name", str(capability))
    hint = _hint(capability, model, quantize, estimate_gb, budget_gb)
    if now:
        detail = (f"{family} model {model.name!r} needs about {needed:.2f} GiB "
                  f"({estimate_gb:.2f} GiB for this request + {weights_gb:.2f} GiB of weights to load) "
                  f"but only {budget_gb - resident_gb - reserved_gb + freeable_gb:.2f} GiB of the "
                  f"{budget_gb:.2f} GiB budget can be freed now; retry later. {hint}")
    else:
        detail = (f"{family} model {model.name!r} needs about {needed:.2f} GiB "
                  f"({estimate_gb:.2f} GiB for this request + {weights_gb:.2f} GiB of weights) "
                  f"but the memory budget is {budget_gb:.2f} GiB, so it can never run here. {hint} "
                  f"The budget is set by KIAPI_MEMORY_LIMIT_GB.")
    return MemoryBudgetExceeded(
        detail,
        needed_gb=round(needed, 3), budget_gb=round(budget_gb, 3),
        resident_gb=round(resident_gb, 3), freeable_gb=round(freeable_gb, 3),
        reserved_gb=round(reserved_gb, 3), estimate_gb=round(estimate_gb, 3),
        weights_gb=round(weights_gb, 3), hint=hint,
    )


def _hint(capability: Any, model: Any, quantize: int | None, estimate_gb: float, budget_gb: float) -> str:
    """What would make this request fit, naming only changes that do (tested per Mac in
    tests/test_memory_table.py)."""
    tips = ["Try a smaller size (width/height, upscale target) or fewer images per request"]
    current = declared_weights_gb(model, quantize)
    declared = {q: gb for q, gb in (model.weights_gib or {}).items() if q is not None and gb < current}
    setting = (getattr(model, "info", None) or {}).get("resident_quantize_setting")
    # A per-request quantize builds a second copy next to the resident model on every call;
    # when the plugin has one, lowering the resident quantization is what actually helps.
    use_setting = bool(setting) and quantize == model.resident_quantize

    def change(bits: int) -> str:
        return f"{setting}={bits} (the resident quantization; restart the server)" if use_setting else f"quantize {bits}"

    fitting = sorted(q for q, gb in declared.items() if gb + estimate_gb <= budget_gb)
    if fitting and use_setting:
        tips.append(change(fitting[-1]))
    elif fitting:
        tips.append(f"a lower quantize ({', '.join(str(q) for q in fitting)})")
    elif budget_gb - current < estimate_gb / 4 and declared:
        # The weights leave too little room for even a much smaller request: a smaller size is
        # only half the answer.
        roomiest = min(declared, key=lambda q: declared[q])
        if declared[roomiest] < budget_gb:
            tips[0] = (f"Use a smaller size with {change(roomiest)}, which leaves "
                       f"{budget_gb - declared[roomiest]:.1f} GiB for the request")
    others = []
    for other in getattr(capability, "models", ()):
        if other.name == model.name:
            continue
        gb = declared_weights_gb(other, other.resident_quantize)
        if gb < current and gb + estimate_gb <= budget_gb:  # roughly: this request on that model
            others.append(f"{other.name} (~{gb:.1f} GiB weights)")
    if others:
        tips.append(f"another variant: {', '.join(others)}")
    if len(tips) == 1:
        return tips[0] + "."
    return ", ".join(tips[:-1]) + " or " + tips[-1] + "."
