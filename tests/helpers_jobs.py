"""Test-only pieces for the job tests: a capability whose handlers are steered by threading
events, and small stand-ins for the Files store and the model manager.

Handlers never sleep for timing: they wait on events with short timeouts and check for
cancellation while they wait, so every test is deterministic and a stuck test cannot hang
the worker past its teardown.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from kiapi_core.errors import InvalidRequest, MemoryBudgetExceeded
from kiapi_core.files.models import FileRecord, StoredFile
from kiapi_core.jobs.context import JobContext
from kiapi_core.jobs.manager import JobManager, JobServices
from kiapi_core.registry import Capability, Model, Operation
from kiapi_core.settings import Settings

WAIT = 10.0  # generous upper bound for anything that should happen "soon"


@dataclass(eq=False)
class Req:
    """The request object of the test operations (a plain dataclass is enough for the manager)."""

    label: str = ""
    steps: int = 3
    artifacts: int = 1
    #: When set, the handler waits for it before each step (checking for cancel while waiting).
    gate: threading.Event | None = None
    #: Set by the handler when it starts.
    started: threading.Event = field(default_factory=threading.Event)
    #: ``"invalid"`` → InvalidRequest, ``"runtime"`` → RuntimeError, ``"unencodable"`` → bad result.
    fail: str | None = None
    #: Wait on ``gate`` without ever checking for cancel (a handler that ignores cancellation).
    deaf: bool = False
    #: Progress fractions/labels to report, as (fraction, label) pairs, instead of steps.
    script: list[tuple[float | None, str | None]] | None = None
    #: Called after every progress report (to observe the published record from the handler).
    probe: Callable[[], None] | None = None
    order: list[str] | None = None


class MakeResult(msgspec.Struct):
    label: str
    runtime: Any
    settings: Any
    demo: bool
    inputs: list[str]


def work(job: JobContext) -> MakeResult:
    req: Req = job.request
    req.started.set()
    if req.order is not None:
        req.order.append(req.label)
    if req.deaf and req.gate is not None:
        req.gate.wait(WAIT)
    runtime = job.runtime()
    if req.script is not None:
        for fraction, label in req.script:
            job.progress(fraction, label)
            if req.probe:
                req.probe()
    for step in range(req.steps):
        if req.gate is not None:
            while not req.gate.wait(0.005):
                job.check_canceled()
        job.progress((step + 1) / req.steps, "denoising")
        if req.probe:
            req.probe()
    if req.fail == "invalid":
        raise InvalidRequest("steps must be even", field="steps")
    if req.fail == "runtime":
        raise RuntimeError("boom")
    with job.phase("saving"):
        for index in range(req.artifacts):
            if index % 2 == 0:
                job.store_artifact(b"png-bytes-%d" % index, filename=f"out{index}.png", content_type="image/png")
            else:
                path = job.workdir / f"out{index}.png"
                path.write_bytes(b"from-path")
                job.store_artifact(path, filename=path.name, content_type="image/png", meta={"seed": 7})
    job.metric("steps_done", req.steps)
    assert job.cache_dir.name == job.capability.name
    if req.fail == "unencodable":
        return object()  # type: ignore[return-value]
    return MakeResult(label=req.label, runtime=runtime, settings=job.settings, demo=job.demo,
                      inputs=sorted(job.inputs))


MODEL = Model(name="tiny", aliases=("t",), default=True, resident_quantize=8)
MAKE = Operation(name="make", request=Req, result=MakeResult, handler=work, job_type="testcap")
OTHER = Operation(name="other", request=Req, result=MakeResult, handler=work, job_type="testcap-other")
LAZY = Operation(name="lazy", request=Req, result=MakeResult, handler="helpers_jobs:work", job_type="testcap")
BROKEN = Operation(name="broken", request=Req, result=None, handler="no_such_module_xyz:work",
                   job_type="testcap")
CAPABILITY = Capability(name="testcap", domain="test", title="Test capability", models=(MODEL,),
                        operations=(MAKE, OTHER, LAZY, BROKEN))


class FakeFiles:
    """Stand-in for ``kiapi_core.files.store.FileStore`` (same method names and keywords)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.stored: dict[str, StoredFile] = {}
        self.moved: list[bool] = []

    def _record(self, path: Path, filename: str, content_type: str, meta: Mapping[str, Any] | None) -> StoredFile:
        record = FileRecord(file_id=path.name, filename=filename, content_type=content_type,
                            size=path.stat().st_size, created_at=time.time(), meta=dict(meta or {}))
        stored = StoredFile(record=record, path=path)
        self.stored[record.file_id] = stored
        return stored

    def put_bytes(self, data: bytes, *, filename: str, content_type: str,
                  meta: Mapping[str, Any] | None = None) -> StoredFile:
        path = self.root / ("file_" + uuid.uuid4().hex)
        path.write_bytes(data)
        return self._record(path, filename, content_type, meta)

    def put_path(self, path: Path, *, filename: str, content_type: str,
                 meta: Mapping[str, Any] | None = None, move: bool = True) -> StoredFile:
        target = self.root / ("file_" + uuid.uuid4().hex)
        self.moved.append(move)
        (shutil.move if move else shutil.copyfile)(path, target)
        return self._record(target, filename, content_type, meta)


class FakeModels:
    """Stand-in for ``kiapi_core.memory.ModelManager``: records every call, thread-safely."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.refuse: set[str] = set()      # job labels whose begin_job raises MemoryBudgetExceeded
        self.fail_end = False
        self.after_loading: Callable[[], None] | None = None
        self.succeeded: dict[str, bool] = {}

    def _log(self, name: str, job_id: str) -> None:
        with self._lock:
            self.calls.append((name, job_id))

    def names(self, job_id: str) -> list[str]:
        with self._lock:
            return [name for name, jid in self.calls if jid == job_id]

    def begin_job(self, job_id: str, capability: Capability, model: Model, operation: Operation,
                  params: Mapping[str, Any] | None = None, estimate_gb: float | None = None) -> float:
        self._log("begin_job", job_id)
        if (params or {}).get("label") in self.refuse:
            raise MemoryBudgetExceeded("needs 99 GB, budget 8 GB", needed_gb=99.0)
        return estimate_gb or 0.0

    def acquire(self, job_id: str, capability: Capability, model: Model, quantize: int | None,
                options: Mapping[str, Any], on_loading: Callable[[], None]) -> Any:
        self._log("acquire", job_id)
        on_loading()
        if self.after_loading is not None:
            self.after_loading()
        return {"model": model.name, "quantize": quantize, "options": dict(options)}

    def end_job(self, job_id: str, *, succeeded: bool = True) -> dict[str, Any]:
        self._log("end_job", job_id)
        with self._lock:
            self.succeeded[job_id] = succeeded
        if self.fail_end:
            raise RuntimeError("end_job exploded")
        return {"peak_gb": 0.5}


@dataclass
class Rig:
    manager: JobManager
    files: FakeFiles
    models: FakeModels
    work_root: Path

    def submit(self, operation: Operation = MAKE, **fields: Any) -> tuple[str, Req]:
        req = Req(**fields)
        inputs: dict[str, StoredFile] = {}
        if "image" not in fields:
            inputs["image"] = self.files.put_bytes(b"in", filename="in.png", content_type="image/png")
        job = self.manager.submit(capability=CAPABILITY, operation=operation, model=MODEL, request=req,
                                  params={"label": req.label}, inputs=inputs,
                                  input_ids={k: v.file_id for k, v in inputs.items()},
                                  warnings=["demo mode"], estimate_gb=1.0)
        return job.id, req


def make_rig(tmp_path: Path, **settings: Any) -> Rig:
    files = FakeFiles(tmp_path / "files")
    models = FakeModels()
    work_root = tmp_path / "work"
    services = JobServices(files=files, models=models, plugin_settings=lambda name: {"namespace": name},
                           cache_dir=lambda name: tmp_path / "cache" / name, work_root=work_root, demo=True)
    manager = JobManager(settings=Settings(data_dir=str(tmp_path), **settings), services=services)
    return Rig(manager=manager, files=files, models=models, work_root=work_root)
