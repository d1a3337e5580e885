"""LoRA training: safe dataset extraction, the mflux config, progress and the adapter artifacts.

mflux's ``TrainingRunner`` has no callback API, so for the duration of one run (under a lock;
there is a single model thread anyway) three of its hooks are wrapped and always restored:

* ``ErnieTrainingAdapter.encode_data``: one call per image, label ``encoding``;
* ``TrainingTrainer.train``: captures the ``TrainingState`` (iterator = epoch and step);
* ``TrainingTrainer._step_is_finite(loss)``: called once per step with the already evaluated
  loss, right after the forward/backward pass: the step and loss are reported here, and
  ``job.progress`` raising :class:`JobCanceled` aborts the run before the optimizer update.

* ``LoRALinear.from_linear``: mflux's computes a 3/5/6-bit layer's input width wrong
  (:func:`lora_from_linear` is the fixed copy), so training works at every quantization.

* ``TrainingState.save``: mflux writes a checkpoint ZIP; an intermediate one (``save_frequency``)
  is stored in the Files API right away and listed in the job's ``checkpoints`` metric, so a
  canceled or failed run (which has no result) still leaves every checkpoint it reached.

The adapter only exists inside mflux's checkpoint ZIPs (``NNNNNNN_adapter.safetensors``); the
final one is the job's main artifact (stored after training returns).
No resume is offered, so the mflux resume bug (ErnieTrainingAdapter.load_lora_adapter without
``bake_lora=False``) does not apply.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
import traceback
import zipfile
from collections.abc import Iterator
from pathlib import Path

import msgspec

from kiapi_core.sdk import JobContext, free_memory

from . import dataset, trainconfig
from .params import TrainParams
from .schemas import TrainResponse
from .settings import ErnieSettings, settings_of
from .validation import train_warnings
from .variants import VARIANTS

_HOOK_LOCK = threading.RLock()
ENCODE_START, TRAIN_START, TRAIN_END = 0.05, 0.15, 0.95


class _Tracker:
    def __init__(self, job, num_images: int) -> None:
        self.job = job
        self.num_images = max(1, num_images)
        self.encoded = 0
        self.state = None
        self.losses: list[tuple[int, float]] = []
        self.nonfinite = 0
        self.checkpoints: list[str] = []  # file ids of the intermediate adapters, oldest first
        self._stored_steps: set[int] = set()

    def saved(self, state, training_spec) -> None:
        """mflux just wrote the checkpoint of ``state``'s step: store an intermediate one now."""
        iterator = state.iterator
        step, total = iterator.num_iterations, iterator.total_number_of_steps()
        if not 0 < step < total or step in self._stored_steps:
            return  # the final adapter is stored by run_training once training returned
        zip_path = Path(training_spec.checkpoint.output_path) / "checkpoints" / f"{step:07d}_checkpoint.zip"
        if not zip_path.is_file():
            return
        params: TrainParams = self.job.params
        stored = self.job.store_artifact(
            _read_adapter(zip_path, params.targets), filename=f"ernie_lora_{params.model}_step{step:07d}.safetensors",
            content_type="application/octet-stream", meta={**_meta(self.job), "step": step, "final": False})
        self._stored_steps.add(step)
        self.checkpoints.append(stored.file_id)
        self.job.metric("checkpoints", list(self.checkpoints))

    def encoding(self) -> None:
        self.encoded += 1
        fraction = ENCODE_START + (TRAIN_START - ENCODE_START) * (self.encoded - 1) / self.num_images
        self.job.progress(fraction, f"encoding image {self.encoded}/{self.num_images}")

    def step(self, loss_value: float | None) -> None:
        iterator = self.state.iterator if self.state is not None else None
        if iterator is None:
            self.job.check_canceled()
            return
        step, total = iterator.num_iterations, max(1, iterator.total_number_of_steps())
        epochs = iterator.num_epochs or 1
        epoch = min(getattr(iterator, "_epoch", 0) + 1, epochs)
        label = f"training epoch {epoch}/{epochs} step {step}/{total}"
        if loss_value is not None:
            self.losses.append((step, loss_value))
            self.job.metric("loss", round(loss_value, 6))
            label += f" loss {loss_value:.4f}"
        else:
            self.nonfinite += 1
        self.job.metric("step", step)
        self.job.metric("total_steps", total)
        self.job.metric("epoch", epoch)
        self.job.metric("num_epochs", epochs)
        self.job.progress(TRAIN_START + (TRAIN_END - TRAIN_START) * step / total, label)


def lora_from_linear(linear, r: int = 16, scale: float = 1.0):
    """mflux 0.24's ``LoRALinear.from_linear`` with the input width of a 3-, 5- or 6-bit
    QuantizedLinear computed right (mflux's ``cols * (32 // bits)`` is exact only for 2/4/8 bits,
    so training at those bits failed in the first matmul, after the whole model had loaded)."""
    import mlx.nn as nn
    from mflux.models.common.lora.layer.linear_lora_layer import LoRALinear

    from .loras import quantized_input_width

    output_dims, input_dims = linear.weight.shape
    if isinstance(linear, nn.QuantizedLinear):
        input_dims = quantized_input_width(input_dims, linear.bits)
    lora = LoRALinear(input_dims=input_dims, output_dims=output_dims, r=r, scale=scale)
    lora.linear = linear
    return lora


@contextlib.contextmanager
def quantized_lora_widths() -> Iterator[None]:
    """While the block runs, mflux's ``LoRALinear.from_linear`` is :func:`lora_from_linear`."""
    from mflux.models.common.lora.layer.linear_lora_layer import LoRALinear

    with _HOOK_LOCK:
        original = LoRALinear.__dict__["from_linear"]
        LoRALinear.from_linear = staticmethod(lora_from_linear)
        try:
            yield
        finally:
            LoRALinear.from_linear = original


@contextlib.contextmanager
def _hooks(tracker: _Tracker) -> Iterator[None]:
    from mflux.models.common.training.state.training_state import TrainingState
    from mflux.models.common.training.trainer import TrainingTrainer
    from mflux.models.ernie_image.training_adapter.ernie_training_adapter import ErnieTrainingAdapter

    with _HOOK_LOCK, quantized_lora_widths():
        orig_encode = ErnieTrainingAdapter.__dict__["encode_data"]
        orig_train = TrainingTrainer.__dict__["train"]
        orig_finite = TrainingTrainer.__dict__["_step_is_finite"]
        orig_save = TrainingState.__dict__["save"]

        def encode_data(self, **kwargs):
            tracker.encoding()
            return orig_encode(self, **kwargs)

        def train(*, adapter, training_spec, training_state):
            tracker.state = training_state
            tracker.job.progress(TRAIN_START, "training")
            return orig_train.__func__(adapter=adapter, training_spec=training_spec, training_state=training_state)

        def step_is_finite(loss) -> bool:
            finite = orig_finite.__func__(loss)
            tracker.step(float(loss.item()) if finite else None)
            return finite

        def save(self, adapter, training_spec) -> None:
            orig_save(self, adapter, training_spec)
            tracker.saved(self, training_spec)

        ErnieTrainingAdapter.encode_data = encode_data
        TrainingTrainer.train = staticmethod(train)
        TrainingTrainer._step_is_finite = staticmethod(step_is_finite)
        TrainingState.save = save
        try:
            yield
        finally:
            ErnieTrainingAdapter.encode_data = orig_encode
            TrainingTrainer.train = orig_train
            TrainingTrainer._step_is_finite = orig_finite
            TrainingState.save = orig_save


def _model_path(job: JobContext, params: TrainParams, settings: ErnieSettings) -> str | None:
    from .runtime import model_source

    return model_source(VARIANTS[params.model], settings, job.demo, job.cache_dir if job.demo else None)


def _adapters(output: Path) -> list[tuple[int, Path]]:
    """(step, zip) for every checkpoint mflux wrote, oldest first."""
    found = []
    for path in sorted((output / "checkpoints").glob("*_checkpoint.zip")):
        with contextlib.suppress(ValueError):
            found.append((int(path.name.split("_", 1)[0]), path))
    return found


def _meta(job: JobContext) -> dict:
    """What an adapter's file record says besides what the core records (job id, model, params)."""
    return {"kind": "lora_adapter", "demo": bool(job.demo)}


def _read_adapter(zip_path: Path, targets: list[dict] | None = None) -> bytes:
    with zipfile.ZipFile(zip_path) as archive:
        names = [n for n in archive.namelist() if n.endswith("_adapter.safetensors")]
        if not names:
            raise RuntimeError(f"no *_adapter.safetensors inside {zip_path.name}")
        data = archive.read(names[0])
    return with_alphas(data, targets or [], zip_path.parent)


def with_alphas(data: bytes, targets: list[dict], scratch: Path) -> bytes:
    """The adapter with a ``<module>.alpha`` tensor for every target trained with a custom
    ``alpha``: mflux trains at scale ``alpha / rank`` but saves only lora_A/lora_B, so the
    adapter would otherwise apply at scale 1 (mflux's loader reads ``.alpha`` back)."""
    alphas = {path: alpha for path, _rank, alpha in trainconfig.expand_targets(targets) if alpha is not None}
    if not alphas:
        return data
    import mlx.core as mx

    source, out = scratch / ".adapter_in.safetensors", scratch / ".adapter_out.safetensors"
    source.write_bytes(data)
    try:
        loaded, metadata = mx.load(str(source), return_metadata=True)
        weights = dict(loaded.items())  # type: ignore[union-attr]
        for path, alpha in alphas.items():
            if f"transformer.{path}.lora_A.weight" in weights:
                weights[f"transformer.{path}.alpha"] = mx.array(float(alpha))
        mx.save_safetensors(str(out), weights, metadata=dict(metadata or {}))  # type: ignore[arg-type]
        return out.read_bytes()
    finally:
        source.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def _tiny_if(demo: bool) -> contextlib.AbstractContextManager:
    """In demo mode mflux builds the tiny model (:func:`kiapi_ernie.tiny.tiny_construct`)."""
    if not demo:
        return contextlib.nullcontext()
    from .tiny import tiny_construct

    return tiny_construct()


def run_training(job: JobContext) -> TrainResponse:
    from mflux.models.common.training.runner import TrainingRunner

    started = time.perf_counter()
    params: TrainParams = job.params
    variant = VARIANTS[params.model]
    settings = settings_of(job.settings)
    work = Path(job.workdir)

    job.progress(0.0, "extracting")
    plan = dataset.extract(Path(job.inputs["dataset"].path), work / "data", dataset.Limits.from_settings(settings))
    job.metric("num_images", plan.num_images)

    job.progress(0.02, "loading")
    model_path = _model_path(job, params, settings)
    config = trainconfig.build_config(params, mflux_name=variant.mflux_name, model_path=model_path,
                                      data="data", output_path=str(work / "out"))
    config_path = work / "train.json"
    config_path.write_text(json.dumps(config, indent=2))

    for note in train_warnings(params):
        job.warn(note)
    tracker = _Tracker(job, plan.num_images)
    adapter = spec = None
    try:
        with _hooks(tracker), _tiny_if(job.demo):
            adapter, spec = TrainingRunner.train(config_path=str(config_path), resume_path=None)
        output = Path(spec.checkpoint.output_path)
        num_layers = len(adapter.transformer().layers)
    except BaseException as exc:
        # The traceback's finished frames (mflux's runner, trainer) still hold the model and
        # optimizer state; clear their locals so a canceled or failed run frees its memory now.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        del adapter
        free_memory()
    train_s = time.perf_counter() - started

    job.progress(0.97, "saving")
    checkpoints = _adapters(output)
    if not checkpoints:
        raise RuntimeError(f"training finished but mflux wrote no checkpoint in {output}")
    final_step, final_zip = checkpoints[-1]
    data = _read_adapter(final_zip, params.targets)
    final = job.store_artifact(data, filename=f"ernie_lora_{variant.name}.safetensors",
                               content_type="application/octet-stream",
                               meta={**_meta(job), "step": final_step, "final": True})
    if tracker.nonfinite:
        job.warn(f"{tracker.nonfinite} training step(s) had a non-finite loss and were skipped")
    return TrainResponse(
        model=variant.name, adapter_file_id=final.file_id, adapter_bytes=len(data), num_images=plan.num_images,
        config=_summary(config, params, tracker, final_step=final_step, num_layers=num_layers),
        lora_targets=params.targets, checkpoints=list(tracker.checkpoints), params=msgspec.to_builtins(params),
        timings={"total_s": round(time.perf_counter() - started, 3), "train_s": round(train_s, 3)},
    )


def _summary(config: dict, params: TrainParams, tracker: _Tracker, *, final_step: int, num_layers: int) -> dict:
    """The result's ``config``: what mflux ran, what the request asked for instead, how it ended."""
    last_loss = tracker.losses[-1][1] if tracker.losses else None
    summary = {key: config[key] for key in ("model", "seed", "steps", "guidance", "quantize", "max_resolution",
                                            "low_ram", "gradient_checkpointing", "training_loop", "optimizer")}
    summary["save_frequency"] = params.save_frequency
    if params.requested_steps is not None:
        summary["requested_steps"] = params.requested_steps
    if params.requested_guidance is not None:
        summary["requested_guidance"] = params.requested_guidance
    summary["total_steps"] = final_step
    summary["final_loss"] = None if last_loss is None or not math.isfinite(last_loss) else round(last_loss, 6)
    summary["lora_modules"] = trainconfig.count_modules(params.targets)
    summary["num_layers"] = num_layers
    return summary
