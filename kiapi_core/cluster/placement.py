"""Why a queued job waits when no live host could take it (shown as its ``progress_label``).

At submission a job is checked against the largest live host serving its capability; that host
may stop later, and then no host claims the job (the claim predicate refuses what does not fit).
Every host's pulse looks at the queue now and then and labels such a job with the reason, and
puts ``queued`` back once a host that can take it is live again. Labels a host set on a
refusal after a claim (``waiting for memory: ...``) are left alone: they say more.
"""

from __future__ import annotations

from collections.abc import Iterable

from .interfaces import HostState, QueuedNeed

#: Seconds between two looks at the queue by one host's pulse.
PLACEMENT_S = 5.0
#: How many of the oldest queued jobs one look considers.
PLACEMENT_LIMIT = 200
_OURS = ("waiting: no live host", "waiting: it needs about")
_EPS = 1e-9


def waiting_label(job: QueuedNeed, hosts: Iterable[HostState]) -> str | None:
    """The label ``job`` should show now, or ``None`` to leave it as it is."""
    serving = [h for h in hosts if h.live and not h.draining and job.capability in h.capabilities]
    if not serving:
        want = f"waiting: no live host serves {job.capability!r} now; start one (GET /v1/cluster/hosts)"
    elif job.light or any(job.need_gb + (0.0 if job.model_key in h.resident else job.load_gb) <= h.budget_gb + _EPS
                          for h in serving):
        want = "queued"
    else:
        largest = max(h.budget_gb for h in serving)
        want = (f"waiting: it needs about {job.need_gb + job.load_gb:.2f} GiB and the largest live host serving "
                f"{job.capability!r} has {largest:.2f} GiB; start a larger host or cancel it")
    current = job.progress_label
    if want == current or (want == "queued" and not current.startswith(_OURS)):
        return None
    if current != "queued" and not current.startswith(_OURS):
        return None  # a refusal's reason (set by the host that refused it) stays
    return want


__all__ = ["PLACEMENT_LIMIT", "PLACEMENT_S", "waiting_label"]
