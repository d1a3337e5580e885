"""Operation handlers: ``generate``, ``edit`` and ``train``, run on the model thread.

Each runs from its job's params Struct (:mod:`kiapi_ernie.params`), not from the request: the
params are what the job records, so a job another host picks up runs the same way.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import msgspec

from kiapi_core.sdk import EXTENSIONS, MEDIA_TYPES, JobContext, encode_image

from .params import EditParams, GenerateParams
from .schemas import ImageResponse, Timings, TrainResponse
from .validation import guidance_warnings

SAVING_AT = 0.96


def _lora_files(job: JobContext, params: GenerateParams) -> list[tuple[str, str]]:
    """(file id, path) of each adapter, as the core stored them before the job was queued."""
    return [(job.inputs[f"loras[{i}].file"].file_id, str(job.inputs[f"loras[{i}].file"].path))
            for i in range(len(params.loras))]


def result_params(params: GenerateParams) -> dict[str, Any]:
    """The result's ``params``: the recorded ones, with each input named by the Files-API id it
    was stored as, so a client can send them back to repeat the run."""
    recorded = msgspec.to_builtins(params)
    recorded["loras"] = [{"file": lora.file_ref(), "scale": lora.scale} for lora in params.loras]
    if isinstance(params, EditParams) and params.image_file_id:
        recorded["image"] = {"type": "file_id", "file_id": params.image_file_id}
    return recorded


def _run_image(job: JobContext, params: GenerateParams, *, image_path: Path | None) -> ImageResponse:
    for note in guidance_warnings(params):
        job.warn(note)
    runtime = job.runtime(quantize=params.quantize)
    started = time.perf_counter()
    files = _lora_files(job, params)
    with contextlib.ExitStack() as stack:
        if files:  # on the loaded model, taken off again when the block ends (kiapi_ernie.adapters)
            notes, nbytes, read = stack.enter_context(runtime.loras(files, [lora.scale for lora in params.loras]))
            for note in notes:
                job.warn(note)
            job.metric("lora_gb", round(nbytes / 2**30, 4))
            job.metric("lora_files_read", read)
        image = runtime.generate(
            job, seed=params.seed, prompt=params.prompt, negative_prompt=params.negative_prompt,
            steps=params.steps, width=params.width, height=params.height, guidance=params.guidance,
            scheduler=params.scheduler, image_path=image_path,
            image_strength=params.image_strength if isinstance(params, EditParams) else None,
        )
    total = time.perf_counter() - started
    job.progress(SAVING_AT, "saving")
    fmt = params.format
    data = encode_image(image, fmt, params.quality)
    # The core records job id, capability, model and params with every artifact.
    meta = {"kind": params.kind, "seed": params.seed, "width": image.width, "height": image.height}
    if job.demo:
        meta["demo"] = True
    stored = job.store_artifact(
        data, filename=f"ernie_{params.model}_{params.seed}.{EXTENSIONS[fmt]}", content_type=MEDIA_TYPES[fmt],
        meta=meta,
    )
    job.metric("generate_s", round(total, 3))
    return ImageResponse(
        model=params.model, prompt=params.prompt, file_id=stored.file_id, image_bytes=stored.record.size,
        width=image.width, height=image.height, params=result_params(params),
        timings=Timings(total_s=round(total, 3)),
    )


def generate(job: JobContext) -> ImageResponse:
    """Text-to-image on the resident model (a transient one only for another quantize)."""
    return _run_image(job, job.params, image_path=None)


def edit(job: JobContext) -> ImageResponse:
    """Image-to-image from the resolved ``image`` input."""
    return _run_image(job, job.params, image_path=Path(job.inputs["image"].path))


def train(job: JobContext) -> TrainResponse:
    """LoRA training through mflux's TrainingRunner (see :mod:`kiapi_ernie.training`)."""
    from .training import run_training

    return run_training(job)
