"""What the core hands a plugin's request-time hooks: :class:`RequestContext`.

``prepare(request, ctx)``, ``check(request, params, ctx)``, ``estimate(params, ctx)`` and
``transient(params, ctx)`` (plugin API version 2) all receive one, instead of the whole host:
the plugin's settings, the demo flag, the host's limits and the resolved model, and in
``check`` the resolved input files. It is a frozen Struct: hooks read it, never change it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from ..files.models import StoredFile
from ..registry import Model
from ..settings import DEMO_NOTE


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The host's limits a plugin's validation should respect (from the core settings)."""

    #: Largest image input or output, in pixels (``KIAPI_MAX_IMAGE_PIXELS``).
    max_image_pixels: int = 100_000_000
    #: Largest upload, in MiB (``KIAPI_MAX_UPLOAD_MB``).
    max_upload_mb: float = 2048.0
    #: The memory budget in GiB jobs are admitted against (``KIAPI_MEMORY_LIMIT_GB``, or what the
    #: host derived from the machine); ``None`` when the host has none.
    memory_budget_gb: float | None = None


class RequestContext(msgspec.Struct, frozen=True, kw_only=True):
    """One request's view of the host, for ``prepare``, ``check``, ``estimate`` and ``transient``."""

    #: The capability's name (``"ernie"``).
    capability: str
    #: The model declaration the request resolved to (by name, alias or default).
    model: Model
    #: The plugin's settings Struct instance (``None`` when the capability declares none).
    settings: Any = None
    #: True when the host serves tiny random-weight demo models (``kiapi serve --demo``).
    demo: bool = False
    limits: Limits = msgspec.field(default_factory=Limits)
    #: ``check`` only: resolved FileRef inputs by request field path (``"image"``,
    #: ``"loras[0].file"``); empty in ``prepare`` and ``estimate``.
    inputs: Mapping[str, StoredFile] = msgspec.field(default_factory=dict)

    @property
    def file_ids(self) -> dict[str, str]:
        """``check`` only: the Files-API id each FileRef input resolved to, by field path (a URL
        or data URL input is stored first, so it has one too). Record these in the params
        returned by ``check`` when the result should name the input files."""
        return {path: stored.file_id for path, stored in self.inputs.items()}

    @property
    def demo_note(self) -> str | None:
        """The sentence marking demo outputs, or ``None`` outside demo mode."""
        return DEMO_NOTE if self.demo else None


__all__ = ["Limits", "RequestContext"]
