"""A test plugin: ``wait`` runs until the file ``release`` exists (honours cancel)."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from kiapi_core import Capability, Model, Operation, hookimpl


class WaitRequest(msgspec.Struct, kw_only=True):
    release: str
    mode: str = "sync"
    model: str | None = None


def wait(job):
    """Runs until the file ``release`` exists; honours cancel."""
    while not Path(job.request.release).exists():
        job.progress(0.5, "waiting")
        time.sleep(0.02)
    stored = job.store_artifact(b"released", filename="released.txt", content_type="text/plain")
    return {"file_id": stored.file_id}


@hookimpl
def register_capabilities(register):
    register(Capability(name="sleepy", domain="text", title="Sleepy (test)",
                        models=(Model(name="m", default=True),),
                        operations=(Operation(name="wait", request=WaitRequest, result=None, handler=wait,
                                              job_type="sleepy"),)))
