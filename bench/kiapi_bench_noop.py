"""A weightless capability for the benchmark: measures the host, not a model.

``bench/run.py`` installs it into the server it starts through a fake distribution
(a ``kiapi_bench-0.0.0.dist-info`` with a ``[kiapi]`` entry point on ``PYTHONPATH``), exactly
as a pip-installed plugin would be found. It is never installed for real.

Operations (``POST /v1/bench/noop/...``):

- ``run``: returns at once, no artifact: the cost of a job through the queue and worker;
- ``sleep``: sleeps ``ms`` milliseconds on the model thread (cancelable every 5 ms), for
  event-latency measurements that need a job still running when the client subscribes;
- ``png``: stores a fixed 64×64 PNG as its artifact (the sync PNG path: store, then serve).

A second capability, ``swap`` (``POST /v1/bench/swap/run``), has two models ``a`` and ``b``
declaring 6 GB each: under ``KIAPI_MEMORY_LIMIT_GB=10`` only one fits, so a job for the other
evicts it. A "load" sleeps ``LOAD_S`` seconds and is counted; each result says how many
loads this process has done, which is how the bench counts loads per job.
"""

from __future__ import annotations

import os
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


class SwapRequest(msgspec.Struct, kw_only=True):
    ms: Annotated[int, msgspec.Meta(ge=0, le=60_000)] = 10
    model: str | None = None
    mode: Literal["sync", "async"] = "async"


class SwapResult(msgspec.Struct, kw_only=True):
    model: str
    loads: int


#: Seconds a swap model "load" takes (a real one takes tens of seconds; bench/run.py sets it).
LOAD_S = float(os.environ.get("KIAPI_BENCH_SWAP_LOAD_S", "0.2"))
_loads = [0]


def _png_64() -> bytes:
    """A fixed 64×64 RGB gradient as PNG, built with the standard library only."""
    import struct
    import zlib

    rows = b"".join(b"\x00" + bytes(v for x in range(64) for v in (x * 4, y * 4, 128)) for y in range(64))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PNG = _png_64()


def run(job) -> NoopResult:
    return NoopResult()


def sleep(job) -> NoopResult:
    deadline = time.monotonic() + job.request.ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        job.check_canceled()
        time.sleep(min(left, 0.005))
    return NoopResult()


def png(job) -> NoopResult:
    job.store_artifact(PNG, filename="noop.png", content_type="image/png")
    return NoopResult()


def load_swap(*, model: Model, **_: object) -> str:
    time.sleep(LOAD_S)
    _loads[0] += 1
    return model.name


def swap(job) -> SwapResult:
    name = job.runtime()
    deadline = time.monotonic() + job.request.ms / 1000
    while (left := deadline - time.monotonic()) > 0:
        job.check_canceled()
        time.sleep(min(left, 0.005))
    return SwapResult(model=name, loads=_loads[0])


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
        Operation(name="png", request=NoopRequest, result=NoopResult, handler=png, job_type="bench-png"),
    ),
)

SWAP = Capability(
    name="swap",
    domain="bench",
    title="kiapi benchmark model swap",
    summary="Two 6 GB models that take turns.",
    description="Installed only by bench/run.py to count model loads under a one-model budget.",
    models=(Model(name="a", default=True, loader=load_swap, weights_gib={None: 6.0}),  # type: ignore[arg-type]
            Model(name="b", loader=load_swap, weights_gib={None: 6.0})),  # type: ignore[arg-type]
    operations=(Operation(name="run", request=SwapRequest, result=SwapResult, handler=swap,
                          job_type="bench-swap"),),
)


@hookimpl
def register_capabilities(register):
    register(CAPABILITY)
    register(SWAP)
