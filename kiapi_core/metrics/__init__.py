"""Prometheus metrics of one host, served at ``/metrics`` (text exposition format).

Every host owns its :class:`prometheus_client.CollectorRegistry`; nothing is registered in
the library's global default registry, so tests (and ``kiapi check``) may build several hosts
in one process. Counters and histograms are updated as things happen (job and model events,
HTTP requests); gauges that describe the present (queue, memory, storage) are read from the
host's services when Prometheus scrapes, so they can never drift from ``/health``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from ..jobs.models import Job
from ..units import BYTES_PER_GIB

if TYPE_CHECKING:
    from ..host import Host

#: Seconds: from a 1-step demo image to a LoRA training run.
JOB_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200)
LOAD_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds a storage scan is reused between scrapes (a scan reads every file's sidecar).
STORAGE_CACHE_S = 10.0


class HostMetrics:
    """The metrics of one host; ``render()`` gives the ``/metrics`` body."""

    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, host: Host) -> None:
        # `_created` timestamps double the series and no dashboard reads them; the switch is the
        # library's, process-wide, and the same for every host.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs = Counter("kiapi_jobs", "Jobs that ended, by capability, operation and final status.",
                            ["capability", "operation", "status"], registry=r)
        self.submitted = Counter("kiapi_jobs_submitted", "Jobs accepted into the queue.",
                                 ["capability", "operation"], registry=r)
        self.run_s = Histogram("kiapi_job_run_seconds", "Time jobs spent running on the model thread.",
                               ["capability", "operation"], buckets=JOB_BUCKETS_S, registry=r)
        self.wait_s = Histogram("kiapi_job_wait_seconds", "Time jobs waited in the queue before running.",
                                ["capability", "operation"], buckets=JOB_BUCKETS_S, registry=r)
        self.loads = Counter("kiapi_model_loads", "Model loads (resident and transient).",
                             ["capability", "model"], registry=r)
        self.load_s = Histogram("kiapi_model_load_seconds", "Time model loads took.",
                                ["capability", "model"], buckets=LOAD_BUCKETS_S, registry=r)
        self.evictions = Counter("kiapi_model_evictions", "Resident models unloaded, by reason.",
                                 ["capability", "model", "reason"], registry=r)
        self.http = Counter("kiapi_http_requests", "HTTP requests by method, route template and status.",
                            ["method", "route", "status"], registry=r)
        self.http_s = Histogram("kiapi_http_request_duration_seconds",
                                "Time from request to the end of the response body.",
                                ["method", "route"], buckets=HTTP_BUCKETS_S, registry=r)
        self.webhooks = Counter("kiapi_webhook_deliveries", "Webhook delivery attempts by event and outcome.",
                                ["event", "outcome"], registry=r)
        self._operations = {(c.name, op.job_type): op.name for c in host.registry for op in c.operations}
        r.register(_PresentState(host, self._storage_usage))
        self._host = host
        self._storage_lock = threading.Lock()
        self._storage: tuple[float, dict[str, dict[str, int]]] | None = None
        self.storage_cache_s = STORAGE_CACHE_S
        # Labelled children by metric and labels: ``labels()`` costs ~6 µs more than a dict
        # lookup, and runs for every request and job event (#19, host speed).
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- events ------------------------------------------------------------------------------
    def on_job(self, event: str, job: Job) -> None:
        """A job listener (see ``JobManager.listeners``): cheap, any thread."""
        labels = (job.capability or "", self._operations.get((job.capability or "", job.type), job.type))
        if event == "queued":
            self._child(self.submitted, *labels).inc()
        elif event == "started" and job.started_at is not None:
            self._child(self.wait_s, *labels).observe(max(0.0, job.started_at - job.created_at))
        elif event == "finished":
            self._child(self.jobs, *labels, job.status.value).inc()
            if job.started_at is not None and job.finished_at is not None:
                self._child(self.run_s, *labels).observe(max(0.0, job.finished_at - job.started_at))

    def on_model(self, event: str, facts: dict[str, Any]) -> None:
        """A model-manager listener: ``load`` (``seconds``) and ``evict`` (``reason``)."""
        labels = (facts.get("family", ""), facts.get("model", ""))
        if event == "load":
            self.loads.labels(*labels).inc()
            self.load_s.labels(*labels).observe(float(facts.get("seconds", 0.0)))
        elif event == "evict":
            self.evictions.labels(*labels, facts.get("reason", "other")).inc()

    def on_http(self, method: str, route: str, status: int, seconds: float) -> None:
        self._child(self.http, method, route, str(status)).inc()
        self._child(self.http_s, method, route).observe(seconds)

    # -- exposition ----------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition; reads the disk for storage figures: call off the event loop."""
        return generate_latest(self.registry)

    def _storage_usage(self) -> dict[str, dict[str, int]]:
        from ..files.retention import usage

        with self._storage_lock:
            now = time.monotonic()
            if self._storage is None or now - self._storage[0] >= self.storage_cache_s:
                self._storage = (now, usage(self._host.files)["kinds"])
            return self._storage[1]


class _PresentState(Collector):
    """Gauges read at scrape time from the host's services."""

    def __init__(self, host: Host, storage: Callable[[], dict[str, dict[str, int]]]) -> None:
        self.host = host
        self.storage = storage

    def describe(self) -> list[Any]:
        return []  # collected lazily: nothing is read at registration

    def collect(self) -> Iterator[Any]:
        host = self.host
        info = InfoMetricFamily("kiapi", "The server's version and mode.")
        info.add_metric([], {"version": host.version, "demo": str(host.settings.demo).lower()})
        yield info
        stats = host.jobs.stats()
        yield GaugeMetricFamily("kiapi_queue_depth", "Jobs waiting in the queue.", value=stats["queued"])
        yield GaugeMetricFamily("kiapi_queue_capacity", "Jobs the queue accepts (KIAPI_MAX_QUEUE).",
                                value=stats["max_queue"])
        yield GaugeMetricFamily("kiapi_jobs_running", "Jobs running on the model thread.",
                                value=0 if stats["running"] is None else 1)
        yield GaugeMetricFamily("kiapi_jobs_kept", "Job records kept (all states).", value=stats["kept"])
        yield from _memory(host.models.stats())
        used = GaugeMetricFamily("kiapi_storage_used_bytes", "Bytes of stored files, by kind.", labels=["kind"])
        count = GaugeMetricFamily("kiapi_storage_files", "Stored files, by kind.", labels=["kind"])
        for kind, figures in sorted(self.storage().items()):
            used.add_metric([kind], figures["bytes"])
            count.add_metric([kind], figures["files"])
        yield used
        yield count


def _memory(stats: dict[str, Any]) -> Iterator[Any]:
    # /v1/memory's *_gb figures are GiB (kiapi_core.units), so bytes are 2**30 per unit.
    yield GaugeMetricFamily("kiapi_memory_budget_bytes", "The memory budget (KIAPI_MEMORY_LIMIT_GB).",
                            value=stats["budget_gb"] * BYTES_PER_GIB)
    yield GaugeMetricFamily("kiapi_memory_used_bytes", "Memory counted against the budget (models + jobs).",
                            value=stats["used_gb"] * BYTES_PER_GIB)
    yield GaugeMetricFamily("kiapi_memory_reserved_bytes", "Memory reserved for running jobs.",
                            value=stats["reserved_gb"] * BYTES_PER_GIB)
    resident = GaugeMetricFamily("kiapi_model_resident_bytes", "Memory counted for each resident model.",
                                 labels=["capability", "model", "quantize"])
    for row in stats["resident"]:
        resident.add_metric([str(row.get("family", "")), str(row.get("model", "")), str(row.get("quantize"))],
                            float(row.get("size_gb", 0.0)) * BYTES_PER_GIB)
    yield resident


__all__ = ["HostMetrics"]
