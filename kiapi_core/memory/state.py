"""The model manager's records: resident models, transient instances and job reservations."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .admission import Key
from .backends import MemoryBackend


@dataclass
class Resident:
    """A model kept loaded between jobs, keyed (family, model, quantize)."""

    key: Key
    model: Any
    runtime: Any
    backend: MemoryBackend
    #: The size the accounting counts (see ``accounted_size``).
    gb: float
    declared_gb: float
    measured_gb: float | None
    loaded_at: float
    last_used: float
    #: Jobs that need it now; a resident with users is never evicted.
    users: set[str] = field(default_factory=set)


@dataclass
class Transient:
    """A one-off instance (LoRA, quantize override) that lives exactly as long as its job."""

    family: str
    model: str
    quantize: int | None
    runtime: Any
    gb: float
    measured_gb: float | None
    #: Names of the loader options that made it transient (``lora_paths``).
    options: tuple[str, ...]


@dataclass
class Reservation:
    """What a running job holds in the budget: its peak, weights it has yet to load, transients."""

    job_id: str
    family: str
    model: str
    operation: str | None
    quantize: int | None
    #: The resident instance the job will use (protected from eviction while it runs).
    key: Key
    backend: MemoryBackend
    raw_estimate_gb: float
    estimate_gb: float
    #: Weights admitted at ``begin_job`` and not loaded yet (0 once loaded or when resident).
    pending_weights_gb: float
    started: float
    #: ``job`` or ``warm`` (an admin load or KIAPI_WARMUP entry, admitted like a job).
    kind: str = "job"
    #: Weights being loaded right now (shown as ``loading`` in stats).
    loading_gb: float = 0.0
    transients: list[Transient] = field(default_factory=list)
    #: Resident keys this job actually acquired.
    acquired: set[Key] = field(default_factory=set)
    base_bytes: int = 0
    load_bytes: int = 0

    @property
    def total_gb(self) -> float:
        return (self.estimate_gb + self.pending_weights_gb + self.loading_gb
                + sum(t.gb for t in self.transients))


#: A measured load below this share of the declared size is not trusted (lazily materialised
#: weights grow on first use); the declaration is counted instead.
TRUST_MEASURED_FROM = 0.5


def accounted_size(declared_gb: float, measured_gb: float | None) -> float:
    """The size to count for a loaded instance: the measurement unless it looks incomplete."""
    if measured_gb is None:
        return declared_gb
    if measured_gb >= TRUST_MEASURED_FROM * declared_gb:
        return measured_gb
    return declared_gb


def resident_row(r: Resident, now: float, ttl: float | None) -> dict[str, Any]:
    """A resident model as shown by ``/health`` and ``GET /v1/memory``."""
    idle = 0.0 if r.users else now - r.last_used
    return {
        "family": r.key[0], "model": r.key[1], "quantize": r.key[2],
        "size_gb": _r(r.gb), "declared_gb": _r(r.declared_gb),
        "measured_gb": None if r.measured_gb is None else _r(r.measured_gb),
        "priority": r.model.priority, "in_use": sorted(r.users), "idle_s": round(idle, 1),
        "expires_in_s": None if (ttl is None or r.users) else round(max(0.0, ttl - idle), 1),
        "backend": r.backend.name,
    }


def reservation_row(res: Reservation, now: float) -> dict[str, Any]:
    """A live reservation (running job, warm-up) as shown by ``GET /v1/memory``."""
    return {
        "job_id": res.job_id, "kind": res.kind, "family": res.family, "model": res.model,
        "operation": res.operation, "quantize": res.quantize,
        "estimate_gb": _r(res.estimate_gb), "raw_estimate_gb": _r(res.raw_estimate_gb),
        "pending_weights_gb": _r(res.pending_weights_gb), "loading_gb": _r(res.loading_gb),
        "transients": [{"model": t.model, "quantize": t.quantize, "gb": _r(t.gb), "options": list(t.options)}
                       for t in res.transients],
        "total_gb": _r(res.total_gb), "running_s": round(now - res.started, 1),
    }


def _r(value: float) -> float:
    """GiB figures as served: 4 decimals (0.1 MB)."""
    return round(value, 4)


round_gb = _r


def sort_key(r: Resident) -> tuple[str, str, int]:
    return (r.key[0], r.key[1], -1 if r.key[2] is None else r.key[2])
