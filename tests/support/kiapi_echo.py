"""A test-only capability plugin: no weights, but every core code path a real plugin uses.

Operations: ``render`` stores a text file as its artifact (optionally an image input is echoed
back), ``slow`` reports progress step by step until released or canceled, ``fail`` fails on
purpose, ``pair`` stores two artifacts, ``batch`` is always async.
"""

from __future__ import annotations

import threading
from typing import Annotated, Literal

import msgspec

from kiapi_core import Capability, FileRef, InvalidRequest, Model, Operation, hookimpl

#: Tests set these to control ``slow`` jobs from outside the worker thread.
GATES: dict[str, threading.Event] = {}


class RenderRequest(msgspec.Struct, kw_only=True):
    text: Annotated[str, msgspec.Meta(min_length=1)]
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"
    image: FileRef | None = None
    repeat: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1


class SlowRequest(msgspec.Struct, kw_only=True):
    steps: int = 5
    gate: str | None = None
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


class FailRequest(msgspec.Struct, kw_only=True):
    how: Literal["invalid", "crash"] = "crash"
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


class RenderResult(msgspec.Struct, kw_only=True):
    file_id: str
    text: str


def prepare_render(request: RenderRequest, model: Model, host) -> dict:
    if request.text == "forbidden":
        raise InvalidRequest("text: 'forbidden' is not allowed; choose another text", field="text")
    return {"text": request.text * request.repeat, "model": model.name}


def render(job) -> RenderResult:
    job.progress(0.5, "rendering")
    data = job.params["text"].encode()
    if "image" in job.inputs:
        data = job.inputs["image"].path.read_bytes()
        stored = job.store_artifact(data, filename="echo.png", content_type="image/png")
    else:
        stored = job.store_artifact(data, filename="echo.txt", content_type="text/plain")
    return RenderResult(file_id=stored.file_id, text=job.params["text"])


def slow(job) -> dict:
    gate = GATES.get(job.request.gate) if job.request.gate else None
    for step in range(job.request.steps):
        job.progress(step / job.request.steps, "working")
        if gate is not None:
            while not gate.wait(0.01):
                job.check_canceled()
    return {"steps": job.request.steps}


def fail(job) -> None:
    if job.request.how == "invalid":
        raise InvalidRequest("the handler rejected this request on purpose")
    raise RuntimeError("boom")


def pair(job) -> dict:
    first = job.store_artifact(b"one", filename="one.txt", content_type="text/plain")
    second = job.store_artifact(b"two", filename="two.txt", content_type="text/plain")
    return {"files": [first.file_id, second.file_id]}


CAPABILITY = Capability(
    name="echo",
    domain="text",
    title="kiapi Echo (test plugin)",
    summary="Echoes text back as a file.",
    description="A capability used by kiapi's own tests.",
    models=(
        Model(name="small", aliases=("echo-small", "Tiny"), default=True, features=("text",)),
        Model(name="large", aliases=("echo-large",), features=("text",)),
    ),
    operations=(
        Operation(name="render", request=RenderRequest, result=RenderResult, handler=render,
                  job_type="echo", prepare=prepare_render, inputs={"image": "image"},
                  produces=("text/plain", "image/png")),
        Operation(name="slow", request=SlowRequest, result=None, handler=slow, job_type="echo-slow"),
        Operation(name="fail", request=FailRequest, result=None, handler=fail, job_type="echo-fail"),
        Operation(name="pair", request=SlowRequest, result=None, handler=pair, job_type="echo-pair"),
        Operation(name="batch", request=SlowRequest, result=None, handler=slow, job_type="echo-batch",
                  always_async=True),
    ),
)


@hookimpl
def register_capabilities(register):
    register(CAPABILITY)
