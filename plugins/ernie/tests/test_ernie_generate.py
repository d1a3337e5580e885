"""generate / edit through real mflux on the tiny demo model (64x64, 2 steps)."""

from __future__ import annotations

import pytest

from kiapi_core.errors import InvalidInput, JobCanceled, WeightsMissing
from kiapi_core.files.refs import FileDataURLRef, FileIDRef
from kiapi_ernie.schemas import EditRequest, GenerateRequest, LoraRef

pytestmark = pytest.mark.slow


def _pixels(job, stored=None):
    from PIL import Image

    stored = stored or job.artifacts[-1]
    with Image.open(stored.path) as image:
        return image.format, image.size, image.convert("RGB").tobytes()


def _diff(a, b) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def _gen(**kw) -> GenerateRequest:
    return GenerateRequest(**{"prompt": "a red apple on a table", "width": 64, "height": 64, "steps": 2,
                              "seed": 7, **kw})


@pytest.mark.parametrize("model, steps, guidance", [("turbo", 8, 1.0), ("ernie-image", 50, 4.0)])
def test_generate_both_variants_resolve_defaults(ernie_job, model, steps, guidance):
    job = ernie_job("generate", GenerateRequest(prompt="an owl", model=model, width=64, height=64))
    assert job.params["steps"] == steps and job.params["guidance"] == guidance
    assert job.params["quantize"] == 8 and job.params["transient"] is False
    assert isinstance(job.params["seed"], int)
    job.params["steps"] = 2  # keep the run short; the defaults are what is checked above
    result = job.run()
    fmt, size, _ = _pixels(job)
    assert (fmt, size) == ("PNG", (64, 64))
    assert result.model == job.model.name and result.width == 64 and result.height == 64
    assert result.file_id == job.artifacts[-1].file_id and result.image_bytes == job.artifacts[-1].record.size
    assert result.params["seed"] == job.params["seed"] and result.timings.total_s > 0
    assert job.runtime_calls == [{"quantize": 8}]


def test_generate_is_reproducible_and_labels_progress(ernie_job):
    first = ernie_job("generate", _gen())
    first.run()
    second = ernie_job("generate", _gen())
    second.run()
    assert _pixels(first)[2] == _pixels(second)[2]
    assert second.labels == ["denoising", "decoding", "saving"]  # resident model already loaded
    fractions = [f for f, label in second.events if label == "denoising" and f is not None]
    assert fractions == sorted(fractions) and len(fractions) == 3  # start + step 1/2 + step 2/2
    assert first.labels[0] in ("loading", "denoising")


@pytest.mark.parametrize("fmt, pil", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_generate_encodes_requested_format(ernie_job, fmt, pil):
    job = ernie_job("generate", _gen(format=fmt, quality=70))
    job.run()
    stored = job.artifacts[-1]
    assert _pixels(job)[0] == pil
    assert stored.record.content_type == f"image/{fmt}"
    assert stored.record.filename.endswith(".jpg" if fmt == "jpeg" else ".webp")


def test_quantize_override_runs_transient(ernie_job):
    job = ernie_job("generate", _gen(quantize=4))
    assert job.params["transient"] is True
    job.run()
    assert job.runtime_calls == [{"quantize": 4}]
    assert "loading" in job.labels and job._transient == []  # freed after the job
    assert _pixels(job)[1] == (64, 64)


def test_base_with_cfg_and_negative_prompt(ernie_job):
    job = ernie_job("generate", _gen(model="base", guidance=4.0, negative_prompt="blurry, dark"))
    job.run()
    assert _pixels(job)[1] == (64, 64)


def test_edit_from_stored_image_records_input(ernie_job, ernie_files, ernie_helpers):
    image = ernie_files(ernie_helpers.png((64, 64), (30, 160, 60)), "in.png", "image/png")
    request = EditRequest(prompt="make it autumn", image=FileIDRef(file_id=image.file_id), width=64, height=64,
                          steps=4, seed=3, image_strength=0.5)
    job = ernie_job("edit", request, inputs={"image": image})
    result = job.run()
    assert result.params["image_file_id"] == image.file_id
    assert result.params["image"] == {"type": "file_id", "file_id": image.file_id}
    assert result.params["kind"] == "edit" and result.params["image_strength"] == 0.5
    assert _pixels(job)[1] == (64, 64)
    # img2img starts at step int(4 * 0.5) = 2: two denoising steps, progress from the timestep
    steps = [f for f, label in job.events if label == "denoising"]
    assert len(steps) == 3


def test_edit_params_never_echo_data_urls(ernie_job, ernie_files, ernie_helpers):
    import base64

    png = ernie_helpers.png((64, 64))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    image = ernie_files(png, "in.png", "image/png")
    request = EditRequest(prompt="x", image=FileDataURLRef(data_url=data_url), width=64, height=64, steps=2)
    job = ernie_job("edit", request, inputs={"image": image})
    assert job.params["image"] == {"type": "data_url", "media_type": "image/png", "chars": len(data_url)}
    result = job.run()
    assert "base64" not in repr(result.params)
    assert result.params["image_file_id"] == image.file_id


def test_lora_changes_the_image(ernie_job, ernie_files, tmp_path):
    from kiapi_ernie.tiny import make_tiny_lora

    plain = ernie_job("generate", _gen())
    plain.run()
    lora = ernie_files(make_tiny_lora(tmp_path / "tiny_lora.safetensors").read_bytes(), "tiny.safetensors")
    job = ernie_job("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id), scale=0.8)]),
                    inputs={"loras[0].file": lora})
    result = job.run()
    assert job.params["transient"] is True
    assert job.runtime_calls[0]["lora_scales"] == [0.8]
    assert job.runtime_calls[0]["lora_paths"][0].endswith(".safetensors")
    assert result.params["loras"] == [{"file": {"type": "file_id", "file_id": lora.file_id}, "scale": 0.8}]
    assert _diff(_pixels(plain)[2], _pixels(job)[2]) > 0.5


def test_corrupt_lora_is_rejected_before_queueing(ernie_job, ernie_files):
    for payload in (b"not a safetensors file at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json!!!}",
                    b"\x02\x00\x00\x00\x00\x00\x00\x00{}"):
        lora = ernie_files(payload, "bad.safetensors")
        with pytest.raises(InvalidInput, match=r"loras\[0\]\.file"):
            ernie_job("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]),
                      inputs={"loras[0].file": lora})


def test_lora_without_lora_tensors_and_over_cap(ernie_job, ernie_files, tmp_path, ernie_helpers):
    import mlx.core as mx

    path = tmp_path / "plain.safetensors"
    mx.save_safetensors(str(path), {"weight": mx.zeros((4, 4))})
    lora = ernie_files(path.read_bytes(), "plain.safetensors")
    with pytest.raises(InvalidInput, match="no LoRA tensors"):
        ernie_job("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]),
                  inputs={"loras[0].file": lora})
    host = ernie_helpers.Host(demo=True, max_lora_mb=0.0001)
    with pytest.raises(InvalidInput, match="KIAPI_ERNIE_MAX_LORA_MB"):
        ernie_job("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]),
                  inputs={"loras[0].file": lora}, host=host)


def test_cancel_mid_run_stops_denoising(ernie_job):
    # events: loading?, denoising start, step 1 -> cancel requested after the 2nd event
    job = ernie_job("generate", _gen(steps=6), cancel_after=2)
    with pytest.raises(JobCanceled):
        job.run()
    steps = [f for f, label in job.events if label == "denoising"]
    assert 1 <= len(steps) < 7 and job.artifacts == [] and "decoding" not in job.labels
    # the resident model is still usable afterwards
    again = ernie_job("generate", _gen())
    again.run()
    assert len(again.artifacts) == 1


def test_missing_local_weights_is_503(tmp_path):
    from kiapi_ernie.capability import CAPABILITY
    from kiapi_ernie.runtime import load
    from kiapi_ernie.settings import ErnieSettings

    turbo = CAPABILITY.models[0]
    with pytest.raises(WeightsMissing, match="KIAPI_ERNIE_TURBO_PATH"):
        load(model=turbo, quantize=8, settings=ErnieSettings(turbo_path=str(tmp_path / "nope")), demo=False,
             cache_dir=tmp_path)


def test_runtime_close_frees_and_refuses(ernie_cache_dir):
    from kiapi_ernie.capability import CAPABILITY
    from kiapi_ernie.runtime import load

    runtime = load(model=CAPABILITY.models[1], quantize=None, demo=True, cache_dir=ernie_cache_dir)
    assert runtime.num_layers == 2
    runtime.close()
    assert runtime.model is None
    with pytest.raises(RuntimeError, match="closed"):
        runtime.generate(None, seed=1, prompt="x", negative_prompt=None, steps=1, width=64, height=64,
                         guidance=4.0, scheduler="linear")


def test_non_square_edit_when_guard_lifted(ernie_job, ernie_files, ernie_helpers):
    image = ernie_files(ernie_helpers.png((48, 80)), "in.png", "image/png")
    request = EditRequest(prompt="x", image=FileIDRef(file_id=image.file_id), width=48, height=80, steps=2)
    job = ernie_job("edit", request, inputs={"image": image}, host=ernie_helpers.Host(edit_require_square=False))
    result = job.run()
    assert (result.width, result.height) == (48, 80) and _pixels(job)[1] == (48, 80)
