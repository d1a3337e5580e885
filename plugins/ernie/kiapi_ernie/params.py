"""The resolved parameters of one ernie job (plugin API 2): what ``prepare`` returns, ``check``
replaces, the job records and the handler runs.

One Struct per operation: :class:`GenerateParams`, :class:`EditParams` and :class:`TrainParams`.
They are not the wire contract (the request Structs in :mod:`kiapi_ernie.schemas` are); the
core records them as JSON on the job (``GET /v1/jobs/{id}`` ``params``), so they hold only
plain data: FileRefs as the core's ``ref_summary`` (ids and URLs without secrets, never inline
data) plus the Files-API ids ``check`` resolved them to, which is what another host needs to run
the job again. Fields at their default (``None``) are left out of the record, so optional facts
(``demo``, ``lora_mb``, ``requested_steps`` ...) appear only when they apply.

Imports only msgspec, like the other declaration modules: no mlx, mflux or Pillow.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

__all__ = ["EditParams", "GenerateParams", "LoraParams", "TrainParams"]


class LoraParams(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """One adapter of a generate/edit job."""

    #: The request's FileRef as recorded (``ref_summary``).
    file: dict[str, Any]
    scale: float
    #: The Files-API id it resolved to (set by ``check``; a URL or data URL is stored first).
    file_id: str | None = None

    def file_ref(self) -> dict[str, Any]:
        """The FileRef a client reruns with: the stored file's id once ``check`` resolved it."""
        return {"type": "file_id", "file_id": self.file_id} if self.file_id else self.file


class GenerateParams(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A text-to-image job (``kind`` ``"txt2img"``), every default resolved."""

    kind: str
    #: The variant's name (``turbo`` or ``base``), never an alias.
    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    width: int
    height: int
    steps: int
    guidance: float
    #: Bits the job runs at; ``None``: unquantized.
    quantize: int | None
    scheduler: str
    format: Literal["png", "jpeg", "webp"]
    quality: int
    loras: list[LoraParams]
    #: Whether the job builds a one-off model (a ``quantize`` other than the resident one).
    transient: bool
    #: Demo mode: the output is noise (``note`` says so).
    demo: bool | None = None
    note: str | None = None
    #: Total size of the adapter files in MiB (set by ``check``; the memory estimate reads it).
    lora_mb: float | None = None


class EditParams(GenerateParams, kw_only=True, frozen=True, omit_defaults=True):
    """An image-to-image job (``kind`` ``"edit"``): a generate job plus its input image."""

    #: The request's ``image`` FileRef as recorded (``ref_summary``).
    image: dict[str, Any]
    image_strength: float
    #: The Files-API id of the stored input image (set by ``check``).
    image_file_id: str | None = None


class TrainParams(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    """A LoRA training job (``kind`` ``"lora_train"``): the mflux training configuration."""

    kind: str
    model: str
    #: The request's ``dataset`` FileRef as recorded (``ref_summary``).
    dataset: dict[str, Any]
    seed: int
    #: The variant's own training schedule (mflux ignores other values; see ``requested_*``).
    steps: int
    guidance: float
    quantize: int | None
    max_resolution: int
    low_ram: bool
    num_epochs: int
    batch_size: int
    timestep_low: int
    timestep_high: int
    learning_rate: float
    #: Checkpoint every N steps; ``None``: only the final adapter.
    save_frequency: int | None
    lora_rank: int
    lora_include_ff: bool
    #: mflux's LoRA target spec, ``{"targets": [{"module_path", "rank", "blocks"?, "alpha"?}, ...]}``.
    lora_layers: dict[str, list[dict[str, Any]]]
    #: Whether the request sent its own ``lora_layers`` (else they derive from rank/include_ff).
    lora_layers_custom: bool
    #: What the request asked for when it differs from the schedule that runs.
    requested_steps: int | None = None
    requested_guidance: float | None = None
    demo: bool | None = None
    note: str | None = None
    #: The Files-API id of the stored dataset ZIP (set by ``check``).
    dataset_file_id: str | None = None

    @property
    def targets(self) -> list[dict[str, Any]]:
        """The LoRA targets to train."""
        return self.lora_layers["targets"]
