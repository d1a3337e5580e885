"""A test-only capability with two models that do not fit in memory together.

``KIAPI_MEMORY_LIMIT_GB=10`` holds one 6 GB model: a job for the other one evicts it. Loads are
recorded in :data:`LOADS` (model names, in order); ``run`` with ``gate`` set waits for
``GATES[gate]`` so tests can fill the queue behind it.
"""

from __future__ import annotations

import threading
from typing import Literal

import msgspec

from kiapi_core import Capability, Model, Operation, hookimpl

LOADS: list[str] = []
GATES: dict[str, threading.Event] = {}


class RunRequest(msgspec.Struct, kw_only=True):
    gate: str | None = None
    model: str | None = None
    mode: Literal["sync", "async"] = "async"


class Runtime:
    def __init__(self, name: str) -> None:
        self.name = name


def load(*, model: Model, **_: object) -> Runtime:
    LOADS.append(model.name)
    return Runtime(model.name)


def run(job) -> dict:
    runtime = job.runtime()
    if job.request.gate:
        GATES[job.request.gate].wait(30)
    return {"model": runtime.name}


CAPABILITY = Capability(
    name="pair", domain="test", title="Two models", summary="Two 6 GB models.",
    models=(Model(name="a", default=True, loader=load, weights_gib={None: 6.0}),  # type: ignore[arg-type]
            Model(name="b", loader=load, weights_gib={None: 6.0})),  # type: ignore[arg-type]
    operations=(Operation(name="run", request=RunRequest, result=None, handler=run, job_type="pair-run"),),
)


@hookimpl
def register_capabilities(register):
    register(CAPABILITY)
