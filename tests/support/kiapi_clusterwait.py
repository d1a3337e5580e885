"""A test plugin for the multi-host tests: ``wait`` runs until a file appears (or forever),
loading its model first so the host shows it resident; ``record`` notes which process ran it."""

from __future__ import annotations

import os
import time
from pathlib import Path

import msgspec

from kiapi_core import Capability, FileRef, Model, Operation, hookimpl


class WaitRequest(msgspec.Struct, kw_only=True):
    release: str = ""
    mode: str = "sync"
    model: str | None = None
    image: FileRef | None = None


class Runtime:
    def close(self) -> None:
        pass


def load(**_: object) -> Runtime:
    return Runtime()


def wait(job):
    """Load the model, then wait for ``release`` (empty: finish at once); honours cancel."""
    job.runtime()
    echoed = job.inputs["image"].path.read_bytes() if "image" in job.inputs else b""
    while job.request.release and not Path(job.request.release).exists():
        job.progress(0.5, "waiting")
        time.sleep(0.02)
    stored = job.store_artifact(b"released by %d:" % os.getpid() + echoed, filename="out.txt",
                                content_type="text/plain")
    return {"file_id": stored.file_id, "pid": os.getpid()}


@hookimpl
def register_capabilities(register):
    register(Capability(
        name="cwait", domain="text", title="Cluster wait (test)",
        models=(Model(name="m1", default=True, loader="kiapi_clusterwait:load", weights_gib={None: 0.01}),
                Model(name="m2", loader="kiapi_clusterwait:load", weights_gib={None: 0.01})),
        operations=(Operation(name="wait", request=WaitRequest, result=None, handler=wait, job_type="cwait",
                              inputs={"image": "image"}),)))
