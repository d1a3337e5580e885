"""Operation handlers: ``generate``, ``edit`` and ``train``, run on the model thread."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from kiapi_core.sdk import EXTENSIONS, MEDIA_TYPES, JobContext, encode_image

from .schemas import ImageResponse, Timings
from .validation import guidance_warnings

SAVING_AT = 0.96


def _lora_files(job: JobContext) -> tuple[list[tuple[str, str]], list[float]]:
    """(file id, path) of each requested adapter, and their scales."""
    loras = list(job.request.loras or ())
    files = [(job.inputs[f"loras[{i}].file"].file_id, str(job.inputs[f"loras[{i}].file"].path))
             for i in range(len(loras))]
    return files, [float(lora.scale) for lora in loras]


def _result_params(job: JobContext) -> dict[str, Any]:
    """The job's resolved params (FileRefs already summarised by the core's ``ref_summary``),
    with each FileRef replaced by the file id it resolved to, so the run can be repeated."""
    params = dict(job.params)
    if params.get("loras"):
        params["loras"] = [
            {**lora, "file": {"type": "file_id", "file_id": job.inputs[f"loras[{i}].file"].file_id}}
            if f"loras[{i}].file" in job.inputs else lora
            for i, lora in enumerate(params["loras"])
        ]
    if "image" in job.inputs:
        params["image_file_id"] = job.inputs["image"].file_id
        params["image"] = {"type": "file_id", "file_id": job.inputs["image"].file_id}
    return params


def _run_image(job: JobContext, *, image_path: Path | None) -> ImageResponse:
    p = job.params
    for note in guidance_warnings(p):
        job.warn(note)
    runtime = job.runtime(quantize=p["quantize"])
    started = time.perf_counter()
    files, scales = _lora_files(job)
    with contextlib.ExitStack() as stack:
        if files:  # on the loaded model, taken off again when the block ends (kiapi_ernie.adapters)
            notes, nbytes, read = stack.enter_context(runtime.loras(files, scales))
            for note in notes:
                job.warn(note)
            job.metric("lora_gb", round(nbytes / 2**30, 4))
            job.metric("lora_files_read", read)
        image = runtime.generate(
            job, seed=p["seed"], prompt=p["prompt"], negative_prompt=p.get("negative_prompt"), steps=p["steps"],
            width=p["width"], height=p["height"], guidance=p["guidance"], scheduler=p["scheduler"],
            image_path=image_path, image_strength=p.get("image_strength") if image_path is not None else None,
        )
    total = time.perf_counter() - started
    job.progress(SAVING_AT, "saving")
    fmt = p["format"]
    data = encode_image(image, fmt, p["quality"])
    params = _result_params(job)
    meta = {"capability": "ernie", "model": p["model"], "kind": p["kind"], "seed": p["seed"],
            "width": image.width, "height": image.height, "job_id": job.job_id}
    if job.demo:
        meta["demo"] = True
    stored = job.store_artifact(
        data, filename=f"ernie_{p['model']}_{p['seed']}.{EXTENSIONS[fmt]}", content_type=MEDIA_TYPES[fmt], meta=meta
    )
    job.metric("generate_s", round(total, 3))
    return ImageResponse(
        model=p["model"], prompt=p["prompt"], file_id=stored.file_id, image_bytes=stored.record.size,
        width=image.width, height=image.height, params=params, timings=Timings(total_s=round(total, 3)),
    )


def generate(job: JobContext) -> ImageResponse:
    """Text-to-image on the resident model (a transient one only for another quantize)."""
    return _run_image(job, image_path=None)


def edit(job: JobContext) -> ImageResponse:
    """Image-to-image from the resolved ``image`` input."""
    return _run_image(job, image_path=Path(job.inputs["image"].path))


def train(job: JobContext):
    """LoRA training through mflux's TrainingRunner (see :mod:`kiapi_ernie.training`)."""
    from .training import run_training

    return run_training(job)
