"""The admission pipeline: every check between a decoded request and the job queue.

A service, not HTTP: the operation route (``http/operations.py``) calls it after decoding the
body, and so does the test harness (``kiapi_core.testing.HandlerHarness``), so a handler under
test sees exactly the params and inputs a real request would give it. In order: the weights are
on disk (503 with the ``kiapi activate`` command), the plugin's ``prepare`` (422), FileRef
resolution (400; URLs fetched, images probed), the plugin's ``check`` (in a thread) and memory
admission (503). Inputs a refused request materialised are deleted again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from .files.resolve import ResolvedInputs, resolve_inputs
from .images import INPUT_BYTES_PER_PIXEL
from .memory.loaders import INPUT_GB
from .registry import Capability, Model, Operation
from .validation import redact
from .weights.presence import checks_disk, require_present

if TYPE_CHECKING:
    from .host import Host

#: Request fields the core itself interprets; they are not recorded as ignored, nor in params.
CORE_FIELDS = ("mode", "model")


@dataclass
class Validated:
    """What :func:`validate` accepted: the job's params, its resolved inputs and memory need."""

    model: Model
    params: dict[str, Any]
    inputs: ResolvedInputs
    estimate_gb: float


async def validate(host: Host, capability: Capability, operation: Operation, body: Any,
                   model: Model) -> Validated:
    """Every check between the model and the queue: weights (503), the plugin's ``prepare``
    (422), FileRef resolution (400), the plugin's ``check`` (in a thread) and memory admission
    (503). Used by the operation route and by ``kiapi_core.testing.HandlerHarness``."""
    plugin_settings = host.plugin_settings(capability.name)
    if checks_disk(model, host.settings.demo):  # no thread hop when there is nothing to read
        await asyncio.to_thread(require_present, capability, model, plugin_settings, demo=host.settings.demo)
    params = redact(operation.prepare(body, model, host) if operation.prepare else default_params(body))
    resolved = await resolve_inputs(body, operation.inputs, store=host.files, settings=host.settings)
    if resolved.pixels:  # a 388 KB PNG can decode to gigabytes: admission must know
        params[INPUT_GB] = round(sum(resolved.pixels.values()) * INPUT_BYTES_PER_PIXEL / 1e9, 4)
    try:
        if operation.check is not None:
            await asyncio.to_thread(operation.check, body, params, resolved.files, host)
        # A cluster checks against its largest live host instead of this one (docs/cluster.md).
        estimate = getattr(host.jobs, "admit", host.models.admit)(capability, model, operation, params)
    except BaseException:
        await discard_inputs(host, resolved.created)
        raise
    return Validated(model=model, params=params, inputs=resolved, estimate_gb=estimate)


async def discard_inputs(host: Host, created: list[str]) -> None:
    """Inputs a request materialised (URL, data URL) belong to no job: do not keep them."""
    for file_id in created:
        await host.files.adelete(file_id)


def default_params(body: Any) -> dict[str, Any]:
    """The params of an operation without ``prepare``: the request's own fields."""
    params = msgspec.to_builtins(body)
    for name in CORE_FIELDS:
        params.pop(name, None)
    return params


__all__ = ["CORE_FIELDS", "Validated", "default_params", "discard_inputs", "validate"]
