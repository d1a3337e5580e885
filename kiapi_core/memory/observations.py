"""Measured peaks per (family, operation, model), and the correction they imply for estimates.

The rule (documented in docs/memory.md, "Estimates and their correction"):

* After every *successful* job the manager records its measured peak (bytes above the weights
  present or loaded during the job) next to the plugin's raw estimate for that request.
  Failed and canceled jobs are not recorded: they stop early and would teach a peak that is too
  low.
* With a raw estimate > 0 the observation is a ratio ``measured / raw``. The corrected estimate
  of a later request is ``raw * factor`` where ``factor`` is the largest of the last
  :data:`WINDOW` ratios times :data:`MARGIN` (10 % headroom), never below :data:`FLOOR`. Taking
  the maximum (not the mean) keeps the correction conservative: one large run keeps the bar up
  for the next ``WINDOW`` runs. There is no upper cap: if reality is three times the estimate,
  the budget must believe reality. The floor means a plugin that over-estimates is corrected to
  at most half its own number: a plugin's estimate encodes request shapes we have not seen yet.
* With a raw estimate of 0 (the plugin estimates nothing) the corrected estimate is the largest
  of the last ``WINDOW`` measured peaks times ``MARGIN``.
* Until the first observation, the raw estimate is used as is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

WINDOW = 8
MARGIN = 1.1
FLOOR = 0.5

ObservationKey = tuple[str, str, str]  # (family, operation, model)


@dataclass
class Observation:
    """The recent history of one (family, operation, model)."""

    count: int = 0
    ratios: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    peaks_gb: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    last_peak_gb: float = 0.0
    last_estimate_gb: float = 0.0

    def factor(self) -> float | None:
        """The multiplier applied to a raw estimate > 0, or ``None`` before any ratio."""
        if not self.ratios:
            return None
        return max(FLOOR, max(self.ratios) * MARGIN)

    def correct(self, raw_gb: float) -> float:
        if raw_gb > 0:
            factor = self.factor()
            return raw_gb if factor is None else raw_gb * factor
        if self.peaks_gb:
            return max(self.peaks_gb) * MARGIN
        return raw_gb


class Observations:
    """All observations. Not locked itself: the model manager calls it under its own lock."""

    def __init__(self) -> None:
        self._by_key: dict[ObservationKey, Observation] = {}

    def record(self, key: ObservationKey, *, raw_estimate_gb: float, measured_peak_gb: float) -> None:
        obs = self._by_key.setdefault(key, Observation())
        obs.count += 1
        measured = max(0.0, measured_peak_gb)
        obs.peaks_gb.append(measured)
        obs.last_peak_gb = measured
        obs.last_estimate_gb = raw_estimate_gb
        if raw_estimate_gb > 0:
            obs.ratios.append(measured / raw_estimate_gb)

    def correct(self, key: ObservationKey, raw_gb: float) -> float:
        """The estimate to account for a request whose plugin estimate is ``raw_gb``."""
        obs = self._by_key.get(key)
        return raw_gb if obs is None else obs.correct(raw_gb)

    def summary(self) -> list[dict[str, Any]]:
        rows = []
        for (family, operation, model), obs in sorted(self._by_key.items()):
            factor = obs.factor()
            rows.append({
                "family": family, "operation": operation, "model": model, "count": obs.count,
                "factor": None if factor is None else round(factor, 3),
                "last_peak_gb": round(obs.last_peak_gb, 4),
                "last_estimate_gb": round(obs.last_estimate_gb, 4),
                "max_recent_peak_gb": round(max(obs.peaks_gb), 4) if obs.peaks_gb else None,
            })
        return rows
