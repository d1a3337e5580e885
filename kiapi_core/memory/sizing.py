""""Will this run on my machine?": each model's typical requests sized against a budget.

Used by ``kiapi models --budget-gb N``. A host built with ``memory_limit_gb=N`` lets plugins
choose their resident quantization for that budget; each capability's ``memory_examples``
gives typical requests, and the same arithmetic as admission (the plugin's estimate plus the
weights it would use) says whether each fits. Nothing is loaded and nothing is corrected by
measurements (a fresh machine has none).
"""

from __future__ import annotations

from typing import Any

from .admission import declared_weights_gb, job_quantize
from .loaders import raw_estimate


def model_fit(capability: Any, model: Any, budget_gb: float) -> dict[str, Any]:
    """One model's resident quantization and, per typical request, the GiB it needs and whether it fits."""
    resident_gb = declared_weights_gb(model, model.resident_quantize)
    row: dict[str, Any] = {
        "family": capability.name, "model": model.name, "default": model.default,
        "resident_quantize": model.resident_quantize, "resident_weights_gb": round(resident_gb, 2),
        "chosen_by": (model.info or {}).get("resident_quantize_chosen_by"),
        "budget_gb": round(budget_gb, 2), "requests": [],
    }
    examples = capability.memory_examples(model) if capability.memory_examples else []
    operations = {op.name: op for op in capability.operations}
    for label, name, params in examples:
        operation = operations[name]
        estimate = raw_estimate(operation, params, model)
        own = bool(getattr(operation, "own_model", False))
        weights = 0.0 if own else declared_weights_gb(model, job_quantize(model, params))
        need = estimate + weights
        row["requests"].append({"label": label, "operation": name, "needs_gb": round(need, 2),
                                "fits": need <= budget_gb})
    return row


def fits_table(host: Any) -> list[dict[str, Any]]:
    """:func:`model_fit` for every model with weights, at the host's budget."""
    budget = host.models.budget.gb
    return [model_fit(c, m, budget) for c in host.registry for m in c.models if m.loader is not None]
