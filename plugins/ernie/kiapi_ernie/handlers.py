"""Operation handlers: ``generate``, ``edit`` and ``train``, run on the model thread."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from kiapi_core.images import EXTENSIONS, MEDIA_TYPES, encode_image

from .schemas import ImageResponse, Timings
from .validation import guidance_warnings

SAVING_AT = 0.96


def _lora_options(job) -> dict[str, Any]:
    """``lora_paths``/``lora_scales`` for the runtime, or nothing (keeps the resident path).

    mlx picks the loader by file extension, and stored blobs may have none, so each adapter
    is linked into the job's workdir as ``lora_<i>.safetensors``.
    """
    loras = list(job.request.loras or ())
    if not loras:
        return {}
    paths = []
    for i in range(len(loras)):
        stored = job.inputs[f"loras[{i}].file"]
        link = Path(job.workdir) / f"lora_{i}.safetensors"
        if not link.exists():
            try:
                os.symlink(Path(stored.path).resolve(), link)
            except OSError:
                shutil.copyfile(stored.path, link)
        paths.append(str(link))
    return {"lora_paths": paths, "lora_scales": [float(lora.scale) for lora in loras]}


def _result_params(job) -> dict[str, Any]:
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


def _run_image(job, *, image_path: Path | None) -> ImageResponse:
    p = job.params
    for note in guidance_warnings(p):
        job.warn(note)
    runtime = job.runtime(quantize=p["quantize"], **_lora_options(job))
    started = time.perf_counter()
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
            "width": image.width, "height": image.height, "job_id": getattr(job, "job_id", None)}
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


def generate(job) -> ImageResponse:
    """Text-to-image on the resident model (or a transient one for loras / another quantize)."""
    return _run_image(job, image_path=None)


def edit(job) -> ImageResponse:
    """Image-to-image from the resolved ``image`` input."""
    return _run_image(job, image_path=Path(job.inputs["image"].path))


def train(job):
    """LoRA training through mflux's TrainingRunner (see :mod:`kiapi_ernie.training`)."""
    from .training import run_training

    return run_training(job)
