"""A weightless capability for the benchmark: measures the host, not a model.

``bench/run.py`` installs it into the server it starts through a fake distribution
(a ``kiapi_bench-0.0.0.dist-info`` with a ``[kiapi]`` entry point on ``PYTHONPATH``), exactly
as a pip-installed plugin would be found. It is never installed for real.

Operations (``POST /v1/bench/noop/...``):

- ``run``: returns at once, no artifact: the cost of a job through the queue and worker;
- ``sleep``: sleeps ``ms`` milliseconds on the model thread (cancelable every 5 ms), for
  event-latency measurements that need a job still running when the client subscribes.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

from kiapi_core import Capability, Model, Operation, hookimpl


class NoopRequest(msgspec.Struct, kw_only=True):
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


class SleepRequest(msgspec.Struct, kw_only=True):
    ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 50
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


class NoopResult(msgspec.Struct, kw_only=True):
    ok: bool = True


def run(job) -> NoopResult:
    return NoopResult()


def sleep(job) -> NoopResult:
    deadline = time.monotonic() + job.request.ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        job.check_canceled()
        time.sleep(min(left, 0.005))
    return NoopResult()


CAPABILITY = Capability(
    name="noop",
    domain="bench",
    title="kiapi benchmark no-op",
    summary="Does nothing, quickly.",
    description="Installed only by bench/run.py to measure the host's own costs.",
    models=(Model(name="none", default=True),),
    operations=(
        Operation(name="run", request=NoopRequest, result=NoopResult, handler=run, job_type="bench-noop"),
        Operation(name="sleep", request=SleepRequest, result=NoopResult, handler=sleep,
                  job_type="bench-sleep"),
    ),
)


@hookimpl
def register_capabilities(register):
    register(CAPABILITY)
