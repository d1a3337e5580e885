"""LoRA training through mflux's TrainingRunner on the tiny model, then applying the adapter."""

from __future__ import annotations

import json
import struct

import pytest

from kiapi_core.errors import JobCanceled
from kiapi_core.files.refs import FileIDRef
from kiapi_ernie.schemas import GenerateRequest, LoraRef, TrainRequest

pytestmark = pytest.mark.slow


@pytest.fixture
def ernie_dataset(ernie_files, ernie_helpers):
    h = ernie_helpers
    data = h.zip({"set/apple.png": h.png((64, 64), (200, 30, 30)), "set/apple.txt": "a red apple",
                  "set/owl.png": h.png((64, 48), (40, 40, 180)), "set/owl.txt": "a barn owl",
                  "set/preview.png": h.png((64, 64))})
    return ernie_files(data, "dataset.zip", "application/zip")


def _header(path) -> dict:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length])


def test_train_then_apply_adapter(ernie, ernie_dataset):
    request = TrainRequest(dataset=FileIDRef(file_id=ernie_dataset.file_id), num_epochs=2, lora_rank=4,
                           save_frequency=2, max_resolution=64)
    job = ernie.run("train", request)
    result = job.raise_for_status().returned
    assert result.num_images == 2 and result.model == "turbo"
    assert result.config["training_loop"] == {"num_epochs": 2, "batch_size": 1, "timestep_low": 1, "timestep_high": 8}
    assert result.config["optimizer"] == {"name": "AdamW", "learning_rate": 1e-4}
    assert result.config["total_steps"] == 4 and result.config["num_layers"] == 2
    assert result.lora_targets[-1] == {"module_path": "text_proj", "rank": 4}
    final = job.artifacts[-1]
    assert result.adapter_file_id == final.file_id and result.adapter_bytes == final.record.size
    assert final.record.filename.endswith(".safetensors") and final.record.meta["final"] is True
    # save_frequency=2 over 4 steps: the step-2 checkpoint is kept as well (stored when written)
    assert result.checkpoints == [job.artifacts[0].file_id] and job.artifacts[0].record.meta["step"] == 2
    assert job.metrics["checkpoints"] == result.checkpoints and len(job.artifacts) == 2
    assert result.params["note"].startswith("demo mode") and job.warnings == []
    keys = [k for k in _header(final.path) if k != "__metadata__"]
    assert "transformer.layers.1.self_attention.to_q.lora_A.weight" in keys and len(keys) == 18
    # progress: encoding per image, then per step with epoch and loss
    assert job.labels[:4] == ["extracting", "loading", "encoding image 1/2", "encoding image 2/2"]
    steps = [label for label in job.labels if label.startswith("training epoch")]
    assert steps[0].startswith("training epoch 1/2 step 1/4 loss ") and steps[-1].startswith("training epoch 2/2 step 4/4")
    assert job.metrics["step"] == 4 and job.metrics["epoch"] == 2 and isinstance(job.metrics["loss"], float)

    plain = ernie.run("generate", GenerateRequest(prompt="a red apple", width=64, height=64, steps=2, seed=1))
    gen = ernie.run("generate", GenerateRequest(prompt="a red apple", width=64, height=64, steps=2, seed=1,
                                                loras=[LoraRef(file=FileIDRef(file_id=final.file_id))]))
    assert plain.succeeded and gen.succeeded and gen.inputs["loras[0].file"].file_id == final.file_id
    assert gen.artifacts[-1].path.read_bytes() != plain.artifacts[-1].path.read_bytes()


def test_train_hooks_are_restored_and_cancel_stops(ernie, ernie_dataset):
    from mflux.models.common.training.state.training_state import TrainingState
    from mflux.models.common.training.trainer import TrainingTrainer
    from mflux.models.ernie_image.ernie_image_initializer import ErnieImageInitializer
    from mflux.models.ernie_image.training_adapter.ernie_training_adapter import ErnieTrainingAdapter

    before = (TrainingTrainer.__dict__["train"], TrainingTrainer.__dict__["_step_is_finite"],
              ErnieTrainingAdapter.__dict__["encode_data"], ErnieImageInitializer.__dict__["_init_models"],
              TrainingState.__dict__["save"])
    request = TrainRequest(dataset=FileIDRef(file_id=ernie_dataset.file_id), num_epochs=50, lora_rank=4,
                           max_resolution=64)
    # the cancel is requested once step 2 (of epoch 1) is reported
    job = ernie.run("train", request, cancel_on=lambda _fraction, label: " step 2/" in (label or ""))
    assert job.canceled and isinstance(job.error, JobCanceled)
    assert job.artifacts == []
    assert any(label.startswith("training epoch 1/50") for label in job.labels)
    after = (TrainingTrainer.__dict__["train"], TrainingTrainer.__dict__["_step_is_finite"],
             ErnieTrainingAdapter.__dict__["encode_data"], ErnieImageInitializer.__dict__["_init_models"],
             TrainingState.__dict__["save"])
    assert after == before


def test_canceled_training_keeps_the_checkpoints_it_wrote(ernie, ernie_dataset):
    """A canceled job has no result: its save_frequency checkpoints are stored as they are written
    and listed in the job's ``checkpoints`` metric (and its artifacts)."""
    request = TrainRequest(dataset=FileIDRef(file_id=ernie_dataset.file_id), num_epochs=10, lora_rank=4,
                           max_resolution=64, save_frequency=1)  # 20 steps: KIAPI_ERNIE_MAX_CHECKPOINTS
    # cancel at step 4: steps 1-3 wrote their checkpoints by then
    job = ernie.run("train", request, cancel_on=lambda _fraction, label: " step 4/" in (label or ""))
    assert job.canceled and isinstance(job.error, JobCanceled)
    stored = job.metrics["checkpoints"]
    assert len(stored) >= 2 and stored == [a.file_id for a in job.artifacts]
    assert [a.record.meta["step"] for a in job.artifacts] == list(range(1, len(stored) + 1))
    assert all(a.record.meta["final"] is False for a in job.artifacts)
    keys = [k for k in _header(job.artifacts[-1].path) if k != "__metadata__"]
    assert "transformer.text_proj.lora_A.weight" in keys


def test_training_other_steps_and_guidance_run_the_variant_schedule(ernie, ernie_dataset):
    request = TrainRequest(dataset=FileIDRef(file_id=ernie_dataset.file_id), num_epochs=1, lora_rank=2,
                           max_resolution=64, steps=20, guidance=2.5)
    job = ernie.run("train", request)
    result = job.raise_for_status().returned
    assert (result.config["steps"], result.config["guidance"]) == (8, 1.0)
    assert (result.config["requested_steps"], result.config["requested_guidance"]) == (20, 2.5)
    assert len(job.warnings) == 2 and all("was not used" in w for w in job.warnings)


def test_training_at_3_bits_with_low_ram_checkpoints_each_block(ernie, ernie_dataset):
    """mflux 0.24 computes a 3/5/6-bit layer's LoRA width wrong and crashed; low_ram turns on
    mflux's gradient checkpointing."""
    request = TrainRequest(dataset=FileIDRef(file_id=ernie_dataset.file_id), num_epochs=1, lora_rank=4,
                           max_resolution=64, quantize=3, low_ram=True)
    result = ernie.run("train", request).raise_for_status().returned
    assert result.config["quantize"] == 3 and result.config["total_steps"] == 2
    assert result.config["low_ram"] is True and result.config["gradient_checkpointing"] is True


def test_custom_alpha_is_kept_in_the_saved_adapter(ernie, ernie_dataset):
    """mflux trains at scale alpha/rank but saves only lora_A/lora_B: the plugin adds `.alpha`,
    which mflux's loader reads back, so the adapter applies at the scale it was trained at."""
    import mlx.core as mx

    targets = [{"module_path": "layers.{block}.self_attention.to_q", "blocks": {"start": 0, "end": 2}, "rank": 4,
                "alpha": 8.0}, {"module_path": "text_proj", "rank": 4}]
    request = TrainRequest(dataset=FileIDRef(file_id=ernie_dataset.file_id), num_epochs=1, max_resolution=64,
                           lora_layers={"targets": targets})
    job = ernie.run("train", request).raise_for_status()
    weights = mx.load(str(job.artifacts[-1].path))
    assert weights["transformer.layers.1.self_attention.to_q.alpha"].item() == 8.0
    assert "transformer.text_proj.alpha" not in weights
