"""The model manager: admission, the resident cache, transient instances and measurement.

Threads: :meth:`ModelManager.admit` and :meth:`ModelManager.stats` run on the event loop; every
other method runs on the single model worker thread. All shared state is guarded by one lock
held only for bookkeeping, never while a model loads or a runtime closes, so the event loop
never waits behind model work.

Accounting: ``used = Σ resident sizes + Σ job reservations`` where a reservation is the job's
corrected peak estimate + weights it will load + its transient instances. No job starts unless
``used + needed ≤ budget`` holds after evicting idle residents, and when it cannot hold, nothing
is evicted. See docs/memory.md.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ..weights.presence import require_present
from .admission import Candidate, Key, declared_weights_gb, job_quantize, plan_eviction, refusal
from .backends import MemoryBackend, backend_for_model
from .budget import GIB, Budget, resolve_budget
from .loaders import close_runtime, raw_estimate, resolve_loader
from .observations import Observations
from .state import Reservation, Resident, Transient, accounted_size, reservation_row, resident_row, sort_key
from .state import round_gb as _r
from .warmup import parse_warmup

log = logging.getLogger("kiapi.memory")

#: ``acquire(quantize=DEFAULT)``: the model's resident quantization.
DEFAULT: Any = ...


class ModelManager:
    """Keeps models within the memory budget. One per host (``host.models``)."""

    def __init__(self, *, settings: Any, registry: Any, plugin_settings: Callable[[str], Any],
                 cache_dir: Callable[[str], Path], demo: bool, clock: Callable[[], float] = time.monotonic,
                 budget: Budget | None = None,
                 backend_for: Callable[[Any], MemoryBackend] | None = None) -> None:
        self._settings = settings
        self._registry = registry
        self._plugin_settings = plugin_settings
        self._cache_dir = cache_dir
        self._demo = demo
        self._clock = clock
        self.budget = budget or resolve_budget(settings)
        self._backend_for = backend_for  # tests inject one; else chosen per operation
        self._lock = threading.Lock()
        self._residents: dict[Key, Resident] = {}
        self._reservations: dict[str, Reservation] = {}
        #: Learned load sizes per (family, model, quantize); they replace declarations.
        self._load_sizes: dict[Key, float] = {}
        self._observations = Observations()
        self._high_water_gb = 0.0
        self._rows: tuple[dict[str, Any], ...] | None = None  # see _model_rows
        #: ``listener(event, facts)`` for ``load`` (family, model, quantize, seconds, gb,
        #: transient) and ``evict`` (family, model, quantize, reason, gb); model thread.
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    # ------------------------------------------------------------------ event loop
    def admit(self, capability: Any, model: Any, operation: Any, params: Mapping[str, Any]) -> float:
        """Check at submission that a job could ever fit; returns the GiB it needs.

        Raises :class:`~kiapi_core.errors.MemoryBudgetExceeded` (503) when the job's peak plus
        the weights it must load exceed the whole budget. Evicts nothing and never loads.
        """
        raw = raw_estimate(operation, params, model)
        with self._lock:
            quantize, _key, estimate, weights, _uses = self._needs(capability, model, operation, params, raw)
            if estimate + weights > self.budget.gb:
                raise self._refusal(capability, model, quantize, estimate, weights, now=False)
            return estimate + weights

    def stats(self) -> dict[str, Any]:
        """Budget, residents, reservations, the running job and observations (JSON-able)."""
        now = self._clock()
        ttl = self._ttl()
        with self._lock:
            residents = [resident_row(r, now, ttl)
                         for r in sorted(self._residents.values(), key=sort_key)]
            reservations = [reservation_row(res, now) for res in self._reservations.values()]
            resident_gb = sum(r.gb for r in self._residents.values())
            reserved_gb = sum(res.total_gb for res in self._reservations.values())
            running = next((res for res in self._reservations.values() if res.kind == "job"), None)
            return {
                **self.budget.as_dict(),
                "used_gb": _r(resident_gb + reserved_gb), "resident_gb": _r(resident_gb),
                "reserved_gb": _r(reserved_gb),
                "free_gb": _r(max(0.0, self.budget.gb - resident_gb - reserved_gb)),
                "accounted_high_water_gb": _r(self._high_water_gb),
                "model_ttl_s": ttl, "demo": self._demo,
                "resident": residents, "reservations": reservations,
                "running": None if running is None else {
                    "job_id": running.job_id, "family": running.family, "model": running.model,
                    "operation": running.operation, "estimate_gb": _r(running.estimate_gb)},
                "observations": self._observations.summary(),
                "models": [dict(row) for row in self._model_rows()],
            }

    # ------------------------------------------------------------------ model thread
    def begin_job(self, job_id: str, capability: Any, model: Any, operation: Any,
                  params: Mapping[str, Any] | None = None) -> float:
        """Admit a job that reached the model thread, evicting exactly the idle models it needs gone.

        Reserves the job's corrected peak (+ the weights it will load) and starts measuring.
        Raises MemoryBudgetExceeded, evicting nothing, when it does not fit. Returns the
        reserved GiB. Always pair with :meth:`end_job` (in a ``finally``) once this returned.
        The estimate is recomputed from the plugin and the observations as they are now (they
        may have changed since :meth:`admit`), and so are the weights to load.
        """
        params = params or {}
        return self._begin(job_id, capability, model, operation, params,
                           raw_estimate(operation, params, model), kind="job")

    def _begin(self, job_id: str, capability: Any, model: Any, operation: Any, params: Mapping[str, Any],
               raw: float, *, kind: str) -> float:
        family = capability.name
        backend = self._backend_for(model) if self._backend_for else backend_for_model(model, operation)
        with self._lock:
            if job_id in self._reservations:
                raise RuntimeError(f"job {job_id} has already begun")
            quantize, key, estimate, weights, uses_resident = self._needs(capability, model, operation, params, raw)
            needed = estimate + weights
            if needed > self.budget.gb:
                raise self._refusal(capability, model, quantize, estimate, weights, now=False)
            # The resident the job will run on is never a victim; a job that builds its own model
            # (training, a one-off copy) may evict an idle resident of the same key like any other.
            candidates = [self._candidate(r) for r in self._residents.values()
                          if not r.users and not (uses_resident and r.key == key)]
            victims = plan_eviction(candidates, used_gb=self._used_gb(), needed_gb=needed, budget_gb=self.budget.gb)
            if victims is None:
                raise self._refusal(capability, model, quantize, estimate, weights, now=True)
            evicted = [self._residents.pop(v.key) for v in victims]
            self._reservations[job_id] = res = Reservation(
                job_id=job_id, family=family, model=model.name,
                operation=getattr(operation, "name", None), quantize=quantize, key=key, backend=backend,
                raw_estimate_gb=raw, estimate_gb=estimate, pending_weights_gb=weights, started=self._clock(),
                kind=kind)
            if uses_resident and key in self._residents:
                self._residents[key].users.add(job_id)
            self._note_high_water()
        self._dispose_residents(evicted, reason=f"budget, for job {job_id}")
        backend.reset_peak()
        res.base_bytes = backend.active_bytes()
        return needed

    def acquire(self, job_id: str, capability: Any, model: Any, quantize: int | None = DEFAULT,
                options: Mapping[str, Any] | None = None,
                on_loading: Callable[[], None] | None = None) -> Any:
        """The runtime for a running job: the resident instance, or a transient one.

        Options (``lora_paths`` ...) or a quantize other than ``model.resident_quantize`` build a
        transient instance tied to the job and freed by :meth:`end_job`. ``on_loading`` is
        called just before a load (the job shows ``loading``). When the load needs more than the
        job was admitted with (a LoRA transient next to its resident copy), idle residents are
        evicted for it, or MemoryBudgetExceeded is raised without evicting.
        """
        family = capability.name
        quantize = model.resident_quantize if quantize is DEFAULT else quantize
        options = dict(options or {})
        transient = bool(options) or quantize != model.resident_quantize
        key: Key = (family, model.name, quantize)
        with self._lock:
            res = self._reservations.get(job_id)
            if res is None:
                raise RuntimeError(f"acquire for job {job_id} outside begin_job/end_job")
            resident = None if transient else self._residents.get(key)
            if resident is not None:
                resident.users.add(job_id)
                resident.last_used = self._clock()
                res.acquired.add(key)
                return resident.runtime
            declared = declared_weights_gb(model, quantize)
            gb = self._weights_for(key, model)
            consumed = min(res.pending_weights_gb, gb)
            victims: list[Candidate] = []
            if gb - consumed > 1e-9:  # more than admitted: make room, or refuse evicting nothing
                candidates = [self._candidate(r) for r in self._residents.values()
                              if r.users <= {job_id} and r.key not in res.acquired]
                plan = plan_eviction(candidates, used_gb=self._used_gb(), needed_gb=gb - consumed,
                                     budget_gb=self.budget.gb)
                if plan is None:
                    raise self._refusal(capability, model, quantize, res.estimate_gb, gb, now=True)
                victims = plan
            evicted = [self._residents.pop(v.key) for v in victims]
            res.pending_weights_gb -= consumed
            res.loading_gb = gb
            self._note_high_water()
        self._dispose_residents(evicted, reason=f"budget, for a load in job {job_id}")
        if on_loading is not None:
            on_loading()
        before = res.backend.active_bytes()
        started = time.monotonic()
        runtime = self._load(capability, model, quantize, options)  # on failure end_job frees all
        loaded = max(0, res.backend.active_bytes() - before)
        measured = loaded / GIB
        size = accounted_size(declared, measured)
        with self._lock:
            res.loading_gb = 0.0
            res.load_bytes += loaded
            if not self._demo:
                self._load_sizes[key] = size
            now = self._clock()
            if transient:
                res.transients.append(Transient(family=family, model=model.name, quantize=quantize,
                                                runtime=runtime, gb=size, measured_gb=measured,
                                                options=tuple(sorted(options))))
            else:
                self._residents[key] = Resident(key=key, model=model, runtime=runtime, backend=res.backend,
                                                gb=size, declared_gb=declared, measured_gb=measured,
                                                loaded_at=now, last_used=now, users={job_id})
                res.acquired.add(key)
            self._note_high_water()
            over = self._used_gb() - self.budget.gb
        took_s = time.monotonic() - started
        log.info("loaded %s/%s q=%s (%s) in %.1fs: measured %.3f GiB, declared %.3f GiB, counted %.3f GiB",
                 family, model.name, quantize, "transient" if transient else "resident",
                 took_s, measured, declared, size,
                 extra={"event": "model_loaded", "job_id": job_id, "capability": family, "model": model.name,
                        "quantize": quantize, "load_s": round(took_s, 3), "gb": round(size, 4)})
        self._emit("load", family=family, model=model.name, quantize=quantize, seconds=took_s, gb=size,
                   transient=transient)
        if over > 1e-9:
            log.warning("the load of %s/%s measured more than its declaration: the accounting exceeds "
                        "the budget by %.3f GiB until a model is evicted", family, model.name, over)
        return runtime

    def end_job(self, job_id: str, *, succeeded: bool = True) -> dict[str, Any]:
        """Free the job's transients, release its reservation and return its measured metrics.

        Call it whatever the outcome (success, failure, cancel). ``succeeded=False`` keeps the
        measurement out of the observations (an aborted run's peak is too low to learn from).
        Returns ``{}`` for an unknown job id, so a second call is harmless.
        """
        with self._lock:
            res = self._reservations.get(job_id)
        if res is None:
            return {}
        peak = max(0, res.backend.peak_bytes() - res.base_bytes)
        for t in res.transients:
            close_runtime(t.runtime, f"transient {t.family}/{t.model}")
        if res.transients:
            res.transients.clear()  # drop the last references before collecting
            # Only when a model was freed: a full collection with mflux imported takes 10-25 ms
            # of held GIL (bench/run.py), which every job would pay and the event loop would feel.
            gc.collect()
        res.backend.free_caches()
        peak_gb = max(0, peak - res.load_bytes) / GIB
        with self._lock:
            self._reservations.pop(job_id, None)
            now = self._clock()
            for resident in self._residents.values():
                if job_id in resident.users:
                    resident.users.discard(job_id)
                    if resident.key in res.acquired:
                        resident.last_used = now
            if succeeded and res.operation is not None:
                self._observations.record((res.family, res.operation, res.model),
                                          raw_estimate_gb=res.raw_estimate_gb, measured_peak_gb=peak_gb)
        metrics = {"peak_gb": _r(peak_gb), "load_gb": _r(res.load_bytes / GIB),
                   "estimate_gb": _r(res.estimate_gb), "raw_estimate_gb": _r(res.raw_estimate_gb),
                   "peak_total_gb": _r(peak / GIB), "memory_backend": res.backend.name}
        log.info("job %s memory: peak %.3f GiB over weights (estimate %.3f GiB, raw %.3f GiB), loaded %.3f GiB",
                 job_id, peak_gb, res.estimate_gb, res.raw_estimate_gb, res.load_bytes / GIB)
        return metrics

    def sweep_idle(self) -> list[Key]:
        """Evict residents idle for ``model_ttl_s`` or longer (0 disables); returns their keys."""
        ttl = self._ttl()
        if ttl is None:
            return []
        now = self._clock()
        with self._lock:
            expired = [k for k, r in self._residents.items() if not r.users and now - r.last_used >= ttl]
            evicted = [self._residents.pop(k) for k in expired]
        self._dispose_residents(evicted, reason=f"idle for {ttl:g}s")
        return expired

    def warm(self, family: str, model_name: str | None) -> dict[str, Any]:
        """Load a model resident (admin ``load`` and ``KIAPI_WARMUP``), admitted like a job."""
        capability = self._registry.get(family)
        model = self._registry.resolve_model(family, model_name)
        # Never let a warm-up start a download.
        require_present(capability, model, self._plugin_settings(family), demo=self._demo)
        job_id = f"warm-{family}-{model.name}-{uuid.uuid4().hex[:8]}"
        self._begin(job_id, capability, model, None, {}, 0.0, kind="warm")
        try:
            self.acquire(job_id, capability, model)
        finally:
            self.end_job(job_id, succeeded=False)
        key = (family, model.name, model.resident_quantize)
        return next((r for r in self.stats()["resident"] if (r["family"], r["model"], r["quantize"]) == key), {})

    def unload(self, family: str, model_name: str | None) -> list[dict[str, Any]]:
        """Evict the idle resident instances of a model (every quantization); returns them."""
        model = self._registry.resolve_model(family, model_name)
        with self._lock:
            keys = [k for k, r in self._residents.items() if k[:2] == (family, model.name) and not r.users]
            evicted = [self._residents.pop(k) for k in keys]
        self._dispose_residents(evicted, reason="admin unload")
        return [{"family": r.key[0], "model": r.key[1], "quantize": r.key[2], "size_gb": _r(r.gb)}
                for r in evicted]

    def close(self) -> None:
        """Evict everything (host shutdown)."""
        with self._lock:
            evicted = list(self._residents.values())
            self._residents.clear()
            transients = [t for res in self._reservations.values() for t in res.transients]
            for res in self._reservations.values():
                res.transients.clear()
        for t in transients:
            close_runtime(t.runtime, f"transient {t.family}/{t.model}")
        self._dispose_residents(evicted, reason="shutdown")

    def budget_description(self) -> str:
        """The budget line for the start-up log."""
        return self.budget.describe()

    def parse_warmup(self, entries: Iterable[str]) -> list[tuple[str, str]]:
        """``KIAPI_WARMUP`` entries as (family, canonical model); see :func:`warmup.parse_warmup`."""
        return parse_warmup(entries, self._registry)

    def needs_eviction(self, capability: Any, model: Any, operation: Any, params: Mapping[str, Any]) -> bool:
        """Whether starting this job now would evict a loaded model (for the job scheduler):
        it must load weights, and they do not fit beside the residents. Running jobs'
        reservations are left out: they end before a queued job starts."""
        raw = raw_estimate(operation, params, model)
        with self._lock:
            _quantize, key, estimate, weights, _on_resident = self._needs(capability, model, operation, params, raw)
            if weights <= 0 or not any(k != key for k in self._residents):
                return False
            resident_gb = sum(r.gb for r in self._residents.values())
            return resident_gb + estimate + weights > self.budget.gb + 1e-9

    def resident_keys(self) -> list[Key]:
        """Keys of the resident models (tests, logs)."""
        with self._lock:
            return list(self._residents)

    # ------------------------------------------------------------------ internals
    def _needs(self, capability: Any, model: Any, operation: Any, params: Mapping[str, Any],
               raw: float) -> tuple[int | None, Key, float, float, bool]:
        """(quantize, resident key, corrected estimate, weights to load, whether the job runs on
        the resident instance of that key). Lock held."""
        quantize = job_quantize(model, params)
        key: Key = (capability.name, model.name, quantize)
        op_name = getattr(operation, "name", None)
        estimate = raw
        if op_name is not None and not self._demo:
            estimate = self._observations.correct((capability.name, op_name, model.name), raw)
        if getattr(operation, "own_model", False):
            return quantize, key, estimate, 0.0, False
        transient = quantize != model.resident_quantize
        builds_copy = getattr(operation, "transient", None)
        if builds_copy is not None and builds_copy(params):
            transient = True
        weights = 0.0 if (not transient and key in self._residents) else self._weights_for(key, model)
        return quantize, key, estimate, weights, not transient

    def _model_rows(self) -> tuple[dict[str, Any], ...]:
        """Each servable model's resident quantization, its weights and who chose it; made once
        (the registry is complete and fixed by then): it was most of ``stats()``'s cost."""
        if self._rows is not None:
            return self._rows
        rows = []
        for capability in self._registry:
            for m in capability.models:
                if m.loader is None:
                    continue
                rows.append({"family": capability.name, "model": m.name, "resident_quantize": m.resident_quantize,
                             "weights_gb": _r(declared_weights_gb(m, m.resident_quantize)),
                             "chosen_by": (m.info or {}).get("resident_quantize_chosen_by")})
        self._rows = tuple(rows)
        return self._rows

    def _weights_for(self, key: Key, model: Any) -> float:
        learned = self._load_sizes.get(key)
        return learned if learned is not None else declared_weights_gb(model, key[2])

    def _used_gb(self) -> float:
        return (sum(r.gb for r in self._residents.values())
                + sum(res.total_gb for res in self._reservations.values()))

    def _note_high_water(self) -> None:
        self._high_water_gb = max(self._high_water_gb, self._used_gb())

    def _candidate(self, r: Resident) -> Candidate:
        return Candidate(key=r.key, gb=r.gb, priority=r.model.priority, last_used=r.last_used)

    def _refusal(self, capability: Any, model: Any, quantize: int | None, estimate: float,
                 weights: float, *, now: bool) -> Exception:
        resident = sum(r.gb for r in self._residents.values())
        freeable = sum(r.gb for r in self._residents.values() if not r.users)
        reserved = sum(res.total_gb for res in self._reservations.values())
        return refusal(capability=capability, model=model, quantize=quantize, estimate_gb=estimate,
                       weights_gb=weights, budget_gb=self.budget.gb, resident_gb=resident,
                       freeable_gb=freeable, reserved_gb=reserved, now=now)

    def _ttl(self) -> float | None:
        ttl = getattr(self._settings, "model_ttl_s", 0) or 0
        return float(ttl) if ttl > 0 else None

    def _load(self, capability: Any, model: Any, quantize: int | None, options: dict[str, Any]) -> Any:
        loader = resolve_loader(model.loader)
        if loader is None:
            return None
        return loader(model=model, quantize=quantize, settings=self._plugin_settings(capability.name),
                      demo=self._demo, cache_dir=self._cache_dir(capability.name), **options)

    def _emit(self, event: str, **facts: Any) -> None:
        for listener in self.listeners:
            try:
                listener(event, facts)
            except Exception:  # an observer must never break a load
                log.exception("model listener failed on %s", event)

    def _dispose_residents(self, evicted: list[Resident], *, reason: str) -> None:
        if not evicted:
            return
        backend = evicted[0].backend
        before = backend.active_bytes()
        for r in evicted:
            close_runtime(r.runtime, f"{r.key[0]}/{r.key[1]}")
            r.runtime = None
        gc.collect()
        for b in {id(r.backend): r.backend for r in evicted}.values():
            b.free_caches()
        freed = max(0, before - backend.active_bytes()) / GIB
        for r in evicted:
            log.info("evicted %s/%s q=%s (%s): counted %.3f GiB", r.key[0], r.key[1], r.key[2], reason, r.gb)
            self._emit("evict", family=r.key[0], model=r.key[1], quantize=r.key[2],
                       reason=reason.split(",")[0].split(" ")[0], gb=r.gb)
        log.info("eviction freed %.3f GiB measured by %s", freed, backend.name)
