"""The worker side of a cluster host: claim, lease, fenced writes, the watchdog and the reaper.

:class:`ClusterRunner` is the board the core's unchanged :class:`~kiapi_core.jobs.worker.Worker`
thread runs jobs from. ``next_job`` claims from the shared queue only while the model thread is
free (it is that thread calling), so a host never holds work it cannot start.

Two threads of its own:

* the **pulse** (every third of the lease, at least every second): publishes this host's state, renews the running
  job's lease (a failed renewal means fenced: the local run is canceled), picks up a cancel
  requested from another host whose notification was lost, and reaps expired leases;
* the **watchdog** (four times a second): cancels the local run once no renewal succeeded for a
  whole lease. It reads only a timestamp, so it works while a database call hangs.

Jobs of operations that use no MLX (``uses_mlx=False``) are claimed by the host's light-pool
threads (``next_pool_job``, ``KIAPI_POOL_WORKERS`` of them) as on one host: they never wait
behind a model job. Each run holds its own lease.

A job this host's admission refuses after the claim (the estimate grew since submission, the
memory is held) goes back to the queue without counting an attempt, with the reason as its
label, and this host leaves it alone for a while (doubling each time); when no live host could
ever hold it, it fails with ``memory_budget`` instead of bouncing for ever.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from ..errors import KiapiError, MemoryBudgetExceeded, Unavailable
from ..jobs.models import Job, JobStatus
from ..jobs.worker import AdminTask, Outcome, Pending
from .interfaces import Claim, ClaimerState, Fenced, HostState, JobBackend, PersistedError
from .placement import PLACEMENT_LIMIT, PLACEMENT_S, waiting_label

log = logging.getLogger("kiapi.cluster")

#: Seconds between claim attempts when no notification arrives (affinity waits expire, lost
#: notifications); a "work available" notification wakes the worker at once.
POLL_S = 1.0
#: Seconds a job this host's admission refused is left to other hosts (doubled per refusal,
#: up to REFUSED_MAX_S); a job that can never fit here is left for NEVER_HERE_S.
REFUSED_S = 10.0
REFUSED_MAX_S = 160.0
NEVER_HERE_S = 600.0
#: Claimable GB of a light-pool claim: pool jobs are not reserved against the budget.
LIGHT_CLAIMABLE_GB = 1e9


@dataclass(eq=False)
class Run:
    pending: Pending
    attempt: int
    renewed_at: float
    #: The lease is gone (watchdog or fenced renewal): the record is not ours to write.
    lost: bool = False
    #: The host is stopping: give the job back to the queue instead of ending it.
    handback: bool = False


class ClusterRunner:
    def __init__(self, *, backend: JobBackend, host_id: str, settings: Any, registry: Any, files: Any,
                 models: Any, host_state: Callable[[], HostState], notify: Callable[..., None],
                 emit: Callable[[str, Job], None] = lambda event, job: None) -> None:
        self.backend = backend
        self.host_id = host_id
        self.settings = settings
        self.lease_s = float(settings.cluster_lease_s)
        self._registry = registry
        self._files = files
        self._models = models
        self._host_state = host_state
        self._notify = notify
        #: ``emit(event, job)``: the manager's listeners (metrics, logs, webhooks) on this host.
        self._emit = emit
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._tasks: list[AdminTask] = []
        self._work_hint = False
        self._light_hint = False
        self._exit = False
        self.claiming = settings.role != "api"
        #: The model thread's run, and the light pool's runs by job id.
        self.run: Run | None = None
        self.light_runs: dict[str, Run] = {}
        #: Jobs refused here after a claim: job id -> (left alone until, refusals so far).
        self._refused: dict[str, tuple[float, int]] = {}
        self._pinned_get = "pinned_ok" in inspect.signature(files.get).parameters
        #: The last database failure of the pulse and since when (``/health``), or ``None``.
        self.db_error: str | None = None
        self._placed_at = 0.0
        self.db_failing_since: float | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        #: Refreshed by every pulse, so the request path never waits on the database for them.
        self.hosts_cache: list[HostState] = []
        self.queued = 0

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        for name, target in (("pulse", self._pulse), ("watchdog", self._watchdog)):
            thread = threading.Thread(target=target, name=f"kiapi-cluster-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop_threads(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5.0)

    def exit(self) -> list[AdminTask]:
        with self._lock:
            self._exit = True
            tasks, self._tasks = self._tasks, []
            self._cond.notify_all()
        return tasks

    def add_task(self, task: AdminTask) -> None:
        with self._lock:
            self._tasks.append(task)
            self._cond.notify()

    def work_available(self) -> None:
        with self._lock:
            self._work_hint = self._light_hint = True
            self._cond.notify_all()

    def runs(self) -> list[Run]:
        """Every job this host runs now (model thread and light pool)."""
        run = self.run
        return ([] if run is None else [run]) + list(self.light_runs.values())

    def _run_of(self, job_id: str) -> Run | None:
        run = self.run
        return run if run is not None and run.pending.job.id == job_id else self.light_runs.get(job_id)

    def cancel_requested(self, job_id: str) -> None:
        run = self._run_of(job_id)
        if run is not None:
            log.info("job %s: cancel requested through the cluster", job_id)
            run.pending.cancel.set()

    # --- the worker board (model thread) -----------------------------------------------------
    def next_job(self) -> Pending | AdminTask | None:
        while True:
            with self._lock:
                if self._exit:
                    return None
                if self._tasks:
                    return self._tasks.pop(0)
                self._work_hint = False
                claiming = self.claiming
            if claiming:
                pending = self._try_claim(light=False)
                if pending is not None:
                    return pending
            with self._lock:
                if not (self._exit or self._tasks or self._work_hint):
                    self._cond.wait(POLL_S)

    def next_pool_job(self) -> Pending | None:
        """For the light-pool threads: claim a job of an operation that uses no MLX (blocks);
        ``None`` to exit."""
        while True:
            with self._lock:
                if self._exit:
                    return None
                self._light_hint = False
                claiming = self.claiming
            if claiming:
                pending = self._try_claim(light=True)
                if pending is not None:
                    return pending
            with self._lock:
                if not (self._exit or self._light_hint):
                    self._cond.wait(POLL_S)

    def _claimer(self, light: bool) -> ClaimerState:
        state = self._host_state()
        now = time.monotonic()
        # Forget a refusal only well after it lapsed, so the next one still doubles the wait.
        self._refused = {k: v for k, v in self._refused.items() if v[0] + REFUSED_MAX_S > now}
        return ClaimerState(host_id=self.host_id, capabilities=state.capabilities, resident=state.resident,
                            claimable_gb=LIGHT_CLAIMABLE_GB if light else state.budget_gb,
                            affinity_wait_s=float(self.settings.affinity_wait_s), lease_s=self.lease_s,
                            exclude=[k for k, (until, _) in self._refused.items() if until > now], light=light)

    def _try_claim(self, *, light: bool) -> Pending | None:
        try:
            claim = self.backend.claim(self._claimer(light))
        except Exception as exc:  # the database may be away (the pulse reports it); try again later
            (log.debug if isinstance(exc, Unavailable) else log.warning)("cluster: claiming failed: %s", exc)
            self._stop.wait(POLL_S)
            return None
        if claim is None:
            return None
        try:
            pending = self._pending(claim)
        except Unavailable:  # the database went away while its inputs were read: not the job's fault
            try:
                self.backend.release(claim.job.id, self.host_id, claim.attempt)
            except Exception:  # still away: the lease lapses and the reaper re-queues it
                pass
            return None
        except Exception as exc:  # an unreadable request fails its job, not the host
            self._fail_unrunnable(claim, exc)
            return None
        run = Run(pending, claim.attempt, time.monotonic())
        if light:
            self.light_runs[claim.job.id] = run
        else:
            self.run = run
        self._emit("started", pending.job)
        pin = getattr(self._files, "pin", None)
        if pin is not None and pending.inputs:
            pin(sorted({s.file_id for s in pending.inputs.values()}))
        self._notify(claim.job.id)
        return pending

    def _pending(self, claim: Claim) -> Pending:
        job = claim.job
        envelope = msgspec.json.decode(claim.request)
        capability = self._registry.get(job.capability)
        operation = next(op for op in capability.operations if op.name == envelope["operation"])
        model = self._registry.resolve_model(capability.name, job.model)
        request = msgspec.convert(envelope["body"], operation.request)
        # A pinned input stays readable after a delete or its expiry until the job ends.
        get = (lambda file_id: self._files.get(file_id, pinned_ok=True)) if self._pinned_get else self._files.get
        inputs = {field: get(file_id) for field, file_id in envelope.get("inputs", {}).items()}
        job.metrics["cluster_host"] = self.host_id
        job.metrics["attempt"] = claim.attempt
        return Pending(job=job, capability=capability, operation=operation, model=model, request=request,
                       inputs=inputs)

    def _fail_unrunnable(self, claim: Claim, exc: Exception) -> None:
        job = claim.job
        detail = exc.detail if isinstance(exc, KiapiError) else f"{type(exc).__name__}: {exc}"
        job.status, job.finished_at, job.progress_label = JobStatus.failed, time.time(), "failed"
        job.error, job.error_code = f"the job could not be started: {detail}", "internal_error"
        try:
            self.backend.finish(job, self.host_id, claim.attempt,
                                PersistedError(status=500, code="internal_error", detail=job.error))
            self._emit("finished", job)
        except Exception:
            log.exception("job %s: could not record its failure", job.id)
        self._notify(job.id)

    def mutate(self, job: Job, change: Callable[[Job], None]) -> None:
        run = self._run_of(job.id)
        if run is None or run.pending.job is not job:
            return
        before = (job.progress, job.progress_label)
        change(job)  # also once lost: the local copy tracks the artifacts to remove at the end
        if run.lost:
            return
        if (job.progress, job.progress_label) != before:
            self._emit("progress", job)
        try:
            self.backend.write(job, self.host_id, run.attempt)
        except Fenced:
            self._lose(run, "its record was taken over by another host")
        except Exception as exc:  # progress is best effort; the lease decides
            log.warning("job %s: could not save progress: %s", job.id, exc)
        self._notify(job.id)

    def finish(self, pending: Pending, outcome: Outcome, metrics: Mapping[str, Any]) -> None:
        job = pending.job
        run = self.light_runs.pop(job.id, None)
        if run is None:
            run, self.run = self.run, None
        unpin = getattr(self._files, "unpin", None)
        if unpin is not None and pending.inputs:
            unpin(sorted({s.file_id for s in pending.inputs.values()}))
        if run is None:
            return
        job.metrics.update(metrics)
        if not run.lost and run.handback:
            self._hand_back(run, reason=None)
            return
        if not run.lost and outcome.error_code == "memory_budget":
            final = self._refused_here(run, outcome)
            if final is None:
                return
            outcome = final
        if not run.lost:
            error = _terminate(job, outcome, pending)
            try:
                self.backend.finish(job, self.host_id, run.attempt, error)
                self._emit("finished", job)
            except Fenced:
                run.lost = True
            except Exception:  # the reaper re-runs or fails it
                log.exception("job %s: could not record its end; the lease will expire", job.id)
        if run.lost:
            log.warning("job %s: attempt %d lost its lease; its late result is discarded", job.id, run.attempt)
            self._drop_artifacts(list(job.artifacts))
        self._notify(job.id)

    def _refused_here(self, run: Run, outcome: Outcome) -> Outcome | None:
        """This host's admission refused a claimed job: give it back (``None``) with the reason,
        leaving it alone here for a while; or, when no live host could ever hold it, the
        failure to end it with."""
        job, exc = run.pending.job, outcome.exc
        extra = exc.extra if exc is not None else {}
        needed, budget = float(extra.get("needed_gb", 0.0)), float(extra.get("budget_gb", 0.0))
        # Failing a job is final: read the registry now (the pulse's copy may predate a host that
        # just joined), and a host whose heartbeat is merely late (a busy machine) still counts.
        try:
            hosts = self.backend.hosts(live_s=self.lease_s)
        except Exception:  # the database may be away: the last pulse's view
            hosts = self.hosts_cache
        recent_s = 3 * self.lease_s
        others = [h for h in hosts if (h.heartbeat_age_s or 0.0) <= recent_s and not h.draining
                  and h.id != self.host_id and job.capability in h.capabilities]
        now = time.monotonic()
        if needed > budget + 1e-9:  # never here
            if not any(h.budget_gb + 1e-9 >= needed for h in others):
                largest = max([budget, *(h.budget_gb for h in others)])
                return Outcome.of(JobStatus.failed, MemoryBudgetExceeded(
                    f"no live host in the cluster can ever run this job: it needs about {needed:.2f} GiB and "
                    f"the largest live host serving {job.capability!r} has a {largest:.2f} GiB budget. "
                    f"{exc.detail if exc is not None else ''}".strip(), **extra))
            self._refused[job.id] = (now + NEVER_HERE_S, 1)
            reason = (f"waiting for a host with more memory: {self.host_id} can never fit it "
                      f"({needed:.2f} GiB > its {budget:.2f} GiB budget)")
        else:
            count = self._refused.get(job.id, (0.0, 0))[1] + 1
            wait_s = min(REFUSED_S * 2 ** (count - 1), REFUSED_MAX_S)
            self._refused[job.id] = (now + wait_s, count)
            reason = (f"waiting for memory: {self.host_id} cannot free {needed:.2f} GiB now "
                      f"(tries again in {wait_s:g} s; other hosts may take it sooner)")
        self._hand_back(run, reason=reason)
        return None

    def _hand_back(self, run: Run, *, reason: str | None) -> None:
        """Release the job to the queue without counting the attempt (``reason``: a refusal;
        ``None``: this host is stopping)."""
        job = run.pending.job
        self._drop_artifacts(list(job.artifacts))
        try:
            self.backend.release(job.id, self.host_id, run.attempt, reason)
            log.info("job %s: given back to the cluster queue (%s)", job.id, reason or "host stopping")
        except Exception as exc:
            log.warning("job %s: could not give it back (%s); the lease will expire", job.id, exc)
        self._notify(job.id)

    def _drop_artifacts(self, file_ids: list[str]) -> None:
        for file_id in file_ids:
            try:
                self._files.delete(file_id)
            except Exception:  # already gone
                pass

    def worker_exited(self) -> None:
        pass

    # --- lease: pulse and watchdog -------------------------------------------------------------
    def _lose(self, run: Run, why: str) -> None:
        if not run.lost:
            run.lost = True
            log.warning("job %s: attempt %d stopped here: %s", run.pending.job.id, run.attempt, why)
            run.pending.cancel_reason = Unavailable(f"this host lost the job: {why}", code="host_lost")
            run.pending.cancel.set()

    def _watchdog(self) -> None:
        while not self._stop.wait(0.25):
            for run in self.runs():
                if not run.lost and time.monotonic() - run.renewed_at > self.lease_s:
                    self._lose(run, f"no lease renewal succeeded for {self.lease_s:g} s")

    def _pulse(self) -> None:
        # A third of the lease, and at least every second: the registry other hosts' submissions
        # read (a new worker is visible within a second) costs one small query a second.
        interval = max(min(self.lease_s / 3.0, 1.0), 0.1)
        while not self._stop.is_set():
            self.pulse_once()
            self._stop.wait(interval)

    def pulse_once(self) -> None:
        try:
            self.backend.heartbeat(self._host_state())
            self.hosts_cache = self.backend.hosts(live_s=self.lease_s)
            self.queued = self.backend.queued()
            for run in self.runs():
                self._renew(run)
            if time.monotonic() >= self._placed_at + PLACEMENT_S:
                self._placed_at = time.monotonic()
                self._label_waiting()
            for job, lost in self.backend.reap(max_attempts=int(self.settings.cluster_max_attempts)):
                log.warning("job %s: its host was lost; now %s", job.id, job.status.value)
                self._drop_artifacts(lost)
                if job.status.terminal:
                    self._emit("finished", job)  # its webhook: the owner cannot send it any more
                self._notify(job.id)
        except Exception as exc:  # the database may be away; the watchdog decides
            cause = exc.__cause__ if exc.__cause__ is not None else exc  # the driver's, not the client's
            error = " ".join(str(cause).split())[:300] or type(cause).__name__
            if self.db_error is None:
                log.warning("cluster: the database is unreachable (%s); running jobs stop after their "
                            "lease, new work is refused with 503 until it is back", error)
                self.db_failing_since = time.time()
            self.db_error = error
            return
        if self.db_error is not None:
            log.info("cluster: the database is reachable again after %.0f s",
                     time.time() - (self.db_failing_since or time.time()))
            self.db_error = self.db_failing_since = None

    def _label_waiting(self) -> None:
        """Say on each queued job that no live host can take why it waits (placement.py)."""
        for need in self.backend.queued_needs(PLACEMENT_LIMIT):
            label = waiting_label(need, self.hosts_cache)
            if label is not None and self.backend.relabel(need.job_id, label):
                self._notify(need.job_id)

    def _renew(self, run: Run) -> None:
        if run.lost:
            return
        started = time.monotonic()
        job_id = run.pending.job.id
        if not self.backend.renew(job_id, self.host_id, run.attempt, self.lease_s):
            self._lose(run, "its lease expired and the job was taken over")
            return
        run.renewed_at = started
        if self.backend.cancel_requested(job_id):
            run.pending.cancel.set()


def _terminate(job: Job, outcome: Outcome, pending: Pending) -> PersistedError | None:
    if outcome.status is JobStatus.canceled and pending.cancel_reason is not None:
        outcome = Outcome.of(JobStatus.canceled, pending.cancel_reason)
    job.status, job.finished_at, job.queue_position = outcome.status, time.time(), None
    if outcome.status is JobStatus.succeeded:
        job.result, job.progress, job.progress_label = outcome.result, 1.0, "done"
        return None
    job.progress_label = outcome.status.value
    job.error, job.error_code = outcome.error, outcome.error_code
    if outcome.exc is not None:
        return PersistedError(status=outcome.exc.status, code=outcome.exc.code, detail=outcome.exc.detail)
    if outcome.status is JobStatus.canceled:
        return PersistedError(status=409, code="canceled", detail=f"job {job.id} was canceled")
    return None


__all__ = ["ClusterRunner", "Run"]
