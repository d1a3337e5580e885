"""generate / edit through real mflux on the tiny demo model (64x64, 2 steps)."""

from __future__ import annotations

import pytest

from kiapi_core.errors import InvalidInput, WeightsMissing
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
def test_generate_both_variants_resolve_defaults(ernie, model, steps, guidance):
    prepared = ernie.prepare("generate", GenerateRequest(prompt="an owl", model=model, width=64, height=64))
    assert prepared.params["steps"] == steps and prepared.params["guidance"] == guidance
    assert prepared.params["quantize"] == 8 and prepared.params["transient"] is False
    assert isinstance(prepared.params["seed"], int)
    prepared.params["steps"] = 2  # keep the run short; the defaults are what is checked above
    job = ernie.run(prepared)
    result = job.raise_for_status().returned
    fmt, size, _ = _pixels(job)
    assert (fmt, size) == ("PNG", (64, 64))
    assert result.model == job.model.name and result.width == 64 and result.height == 64
    assert result.file_id == job.artifacts[-1].file_id and result.image_bytes == job.artifacts[-1].record.size
    assert result.params["seed"] == job.params["seed"] and result.timings.total_s > 0
    assert job.runtime_calls == [{"quantize": 8}]


def test_generate_is_reproducible_and_labels_progress(ernie):
    first = ernie.run("generate", _gen()).raise_for_status()
    second = ernie.run("generate", _gen()).raise_for_status()
    assert _pixels(first)[2] == _pixels(second)[2]
    # resident model already loaded; the label says which step of how many is done
    assert second.labels == ["denoising step 0/2", "denoising step 1/2", "denoising step 2/2", "decoding", "saving"]
    fractions = [f for f, label in second.events if label.startswith("denoising") and f is not None]
    assert fractions == sorted(fractions) and len(fractions) == 3  # start + step 1/2 + step 2/2
    assert first.labels[0] in ("loading", "denoising step 0/2")


@pytest.mark.parametrize("fmt, pil", [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_generate_encodes_requested_format(ernie, fmt, pil):
    job = ernie.run("generate", _gen(format=fmt, quality=70)).raise_for_status()
    stored = job.artifacts[-1]
    assert _pixels(job)[0] == pil
    assert stored.record.content_type == f"image/{fmt}"
    assert stored.record.filename.endswith(".jpg" if fmt == "jpeg" else ".webp")


def test_quantize_override_runs_transient(ernie):
    job = ernie.run("generate", _gen(quantize=4)).raise_for_status()
    assert job.params["transient"] is True
    assert job.runtime_calls == [{"quantize": 4}] == job.loads
    assert "loading" in job.labels and job.runtimes[0].model is None  # freed after the job
    assert _pixels(job)[1] == (64, 64)


def test_base_with_cfg_and_negative_prompt(ernie):
    job = ernie.run("generate", _gen(model="base", guidance=4.0, negative_prompt="blurry, dark")).raise_for_status()
    assert _pixels(job)[1] == (64, 64) and job.warnings == []


def test_turbo_runs_other_guidance_with_a_warning(ernie):
    """mflux runs CFG on turbo too (its Python API does not refuse): accepted, run, explained."""
    plain = ernie.run("generate", _gen()).raise_for_status()
    job = ernie.run("generate", _gen(guidance=3.0))
    result = job.raise_for_status().returned
    assert result.params["guidance"] == 3.0 and _pixels(job)[1] == (64, 64)
    assert _pixels(job)[2] != _pixels(plain)[2]  # CFG really ran
    assert len(job.warnings) == 1 and "guidance-distilled" in job.warnings[0]


def test_demo_result_says_the_output_is_noise(ernie):
    job = ernie.run("generate", _gen())
    result = job.raise_for_status().returned
    assert result.params["demo"] is True
    assert result.params["note"] == "demo mode: tiny random-weight model, the output is noise"
    assert job.warnings == []  # the core adds the one demo warning per job, not the plugin


def test_edit_from_stored_image_records_input(ernie, ernie_files, ernie_helpers):
    image = ernie_files(ernie_helpers.png((64, 64), (30, 160, 60)), "in.png", "image/png")
    request = EditRequest(prompt="make it autumn", image=FileIDRef(file_id=image.file_id), width=64, height=64,
                          steps=4, seed=3, image_strength=0.5)
    job = ernie.run("edit", request)
    result = job.raise_for_status().returned
    assert job.inputs["image"].file_id == image.file_id
    assert result.params["image_file_id"] == image.file_id
    assert result.params["image"] == {"type": "file_id", "file_id": image.file_id}
    assert result.params["kind"] == "edit" and result.params["image_strength"] == 0.5
    assert _pixels(job)[1] == (64, 64)
    # img2img starts at step int(4 * 0.5) = 2: two denoising steps, progress from the timestep
    assert [label for label in job.labels if label.startswith("denoising")] == [
        "denoising step 0/2", "denoising step 1/2", "denoising step 2/2"]


def test_edit_params_never_echo_data_urls(ernie, ernie_helpers):
    import base64

    png = ernie_helpers.png((64, 64))
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    request = EditRequest(prompt="x", image=FileDataURLRef(data_url=data_url), width=64, height=64, steps=2)
    job = ernie.run("edit", request)  # the core decodes and stores the data URL, as for POST
    assert job.params["image"] == {"type": "data_url", "media_type": "image/png", "chars": len(data_url)}
    result = job.raise_for_status().returned
    assert "base64" not in repr(result.params) and "base64" not in repr(job.result)
    image = job.inputs["image"]
    assert result.params["image_file_id"] == image.file_id and image.path.read_bytes() == png


def test_lora_runs_on_the_resident_model_and_leaves_it_untouched(ernie, ernie_files, tmp_path):
    from kiapi_ernie.tiny import make_tiny_lora

    plain = ernie.run("generate", _gen()).raise_for_status()
    lora = ernie_files(make_tiny_lora(tmp_path / "tiny_lora.safetensors").read_bytes(), "tiny.safetensors")
    request = _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id), scale=0.8)])
    prepared = ernie.prepare("generate", request)
    assert prepared.params["transient"] is False and prepared.params["lora_mb"] > 0
    job = ernie.run(prepared)
    result = job.raise_for_status().returned
    # the resident model, no load, no LoRA loader option: only the adapter was read
    assert job.runtime_calls == [{"quantize": 8}] and job.loads == []
    assert job.metrics["lora_files_read"] == 1 and job.metrics["lora_gb"] > 0
    assert result.params["loras"] == [{"file": {"type": "file_id", "file_id": lora.file_id}, "scale": 0.8}]
    assert _diff(_pixels(plain)[2], _pixels(job)[2]) > 0.5
    again = ernie.run("generate", request).raise_for_status()
    assert again.metrics["lora_files_read"] == 0  # the parsed adapter is cached by file id
    assert _pixels(again)[2] == _pixels(job)[2]
    after = ernie.run("generate", _gen()).raise_for_status()
    assert _pixels(after)[2] == _pixels(plain)[2]  # unwrapped: the resident model is the base again
    runtime = after.runtimes[0]
    assert not any(hasattr(m, "lora_A") or hasattr(m, "loras") for _, m in runtime.model.transformer.named_modules())


def test_corrupt_lora_is_rejected_before_queueing(ernie, ernie_files):
    for payload in (b"not a safetensors file at all", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json!!!}",
                    b"\x02\x00\x00\x00\x00\x00\x00\x00{}"):
        lora = ernie_files(payload, "bad.safetensors")
        with pytest.raises(InvalidInput, match=r"loras\[0\]\.file"):
            ernie.prepare("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]))


def test_lora_without_lora_tensors_and_over_cap(ernie, ernie_files, tmp_path, ernie_helpers):
    import mlx.core as mx

    path = tmp_path / "plain.safetensors"
    mx.save_safetensors(str(path), {"weight": mx.zeros((4, 4))})
    lora = ernie_files(path.read_bytes(), "plain.safetensors")
    with pytest.raises(InvalidInput, match="holds no ERNIE-Image LoRA tensors"):
        ernie.prepare("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]))
    capped = ernie_helpers.harness(demo=True, max_lora_mb=0.0001)
    lora = capped.store(path.read_bytes(), "plain.safetensors")
    with pytest.raises(InvalidInput, match="KIAPI_ERNIE_MAX_LORA_MB"):
        capped.prepare("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]))


def test_cancel_mid_run_stops_denoising(ernie):
    from kiapi_core.errors import JobCanceled

    # the cancel is requested once step 2 of 6 is reported: the next step boundary stops the run
    job = ernie.run("generate", _gen(steps=6), cancel_on="denoising step 2/6")
    assert job.canceled and isinstance(job.error, JobCanceled)
    steps = [f for f, label in job.events if label and label.startswith("denoising")]
    assert 1 <= len(steps) < 7 and job.artifacts == [] and "decoding" not in job.labels
    assert job.labels[-1] == "denoising step 2/6"  # step 3 never reported
    # the resident model is still usable afterwards
    again = ernie.run("generate", _gen()).raise_for_status()
    assert len(again.artifacts) == 1


def test_missing_local_weights_is_503(tmp_path):
    from kiapi_ernie.capability import CAPABILITY
    from kiapi_ernie.runtime import load
    from kiapi_ernie.settings import ErnieSettings

    turbo = CAPABILITY.models[0]
    with pytest.raises(WeightsMissing, match=r"KIAPI_ERNIE_TURBO_PATH.*kiapi activate ernie:turbo"):
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


def test_non_square_edit_when_guard_lifted(ernie_helpers):
    lifted = ernie_helpers.harness(edit_require_square=False)
    image = lifted.store(ernie_helpers.png((48, 80)), "in.png", "image/png")
    request = EditRequest(prompt="x", image=FileIDRef(file_id=image.file_id), width=48, height=80, steps=2)
    job = lifted.run("edit", request)
    result = job.raise_for_status().returned
    assert (result.width, result.height) == (48, 80) and _pixels(job)[1] == (48, 80)


def _lora_file(ernie_files, tmp_path, tensors, name="lora.safetensors"):
    import mlx.core as mx

    path = tmp_path / name
    mx.save_safetensors(str(path), {k: mx.zeros(shape) for k, shape in tensors.items()})
    return ernie_files(path.read_bytes(), name)


def _with_lora(ernie, lora):
    return ernie.prepare("generate", _gen(loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]))


@pytest.mark.parametrize("tensors, expected", [
    # another model's names: nothing mflux's ERNIE mapping recognises
    ({"transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight": (4, 64),
      "transformer.single_transformer_blocks.0.attn.to_q.lora_B.weight": (64, 4)}, "holds no ERNIE-Image LoRA"),
    # an input width the layer does not have (was a [matmul] 500 mid-run)
    ({"transformer.layers.0.self_attention.to_q.lora_A.weight": (4, 128),
      "transformer.layers.0.self_attention.to_q.lora_B.weight": (64, 4)}, "takes 64 inputs"),
    # the real model's sizes on the tiny demo model
    ({"transformer.layers.0.mlp.gate_proj.lora_A.weight": (16, 4096),
      "transformer.layers.0.mlp.gate_proj.lora_B.weight": (12288, 16)}, "expected [rank, 64]"),
    # a wrong output width / rank mismatch (was a [broadcast_shapes] 500)
    ({"transformer.layers.0.self_attention.to_q.lora_A.weight": (4, 64),
      "transformer.layers.0.self_attention.to_q.lora_B.weight": (32, 4)}, "expected [64, 4]"),
    # a block the model does not have (was "could not be applied" 500)
    ({"transformer.layers.7.self_attention.to_q.lora_A.weight": (4, 64),
      "transformer.layers.7.self_attention.to_q.lora_B.weight": (64, 4)}, "has 2 blocks"),
    # half a pair
    ({"lora_unet_text_proj.lora_down.weight": (4, 3072)}, "has lora_A/down but no lora_B/up"),
    ({"transformer.layers.0.self_attention.to_q.lora_A.weight": (4, 64),
      "transformer.layers.0.self_attention.to_q.lora_B.weight": (64, 4),
      "transformer.layers.0.self_attention.to_q.lora_magnitude_vector": (64,)}, "DoRA"),
])
def test_lora_that_does_not_fit_is_400_before_queueing(ernie, ernie_files, tmp_path, tensors, expected):
    lora = _lora_file(ernie_files, tmp_path, tensors)
    with pytest.raises(InvalidInput) as info:
        _with_lora(ernie, lora)
    assert info.value.status == 400 and expected in info.value.detail
    assert "loras[0].file does not fit" in info.value.detail or "loras[0].file" in info.value.detail


def test_lora_fit_lists_every_mismatch(ernie, ernie_files, tmp_path):
    lora = _lora_file(ernie_files, tmp_path, {
        "transformer.layers.0.self_attention.to_q.lora_A.weight": (4, 128),
        "transformer.layers.0.self_attention.to_q.lora_B.weight": (64, 4),
        "transformer.text_proj.lora_A.weight": (4, 3072),
        "transformer.text_proj.lora_B.weight": (32, 4),
        "transformer.layers.9.mlp.up_proj.lora_A.weight": (4, 64),
        "transformer.layers.9.mlp.up_proj.lora_B.weight": (128, 4),
    })
    with pytest.raises(InvalidInput) as info:
        _with_lora(ernie, lora)
    detail = info.value.detail
    assert "layers.0.self_attention.to_q" in detail and "text_proj" in detail and "layers.9.mlp.up_proj" in detail
    assert "tiny demo ERNIE-Image model (2 blocks, hidden 64" in detail


def test_lora_in_kohya_and_bare_spellings_fits(ernie, ernie_files, tmp_path):
    """Names mflux accepts are accepted: kohya lora_up/down, bare lora_A, extra keys ignored."""
    lora = _lora_file(ernie_files, tmp_path, {
        "lora_unet_layers_1_mlp_linear_fc2.lora_down.weight": (4, 128),
        "lora_unet_layers_1_mlp_linear_fc2.lora_up.weight": (64, 4),
        "lora_unet_layers_1_mlp_linear_fc2.alpha": (),
        "layers.0.self_attention.to_out.0.lora_A": (2, 64),
        "layers.0.self_attention.to_out.0.lora_B": (64, 2),
        "lora_unet_adaLN_modulation_1.lora_down.weight": (2, 64),
        "lora_unet_adaLN_modulation_1.lora_up.weight": (384, 2),
        "text_encoder.some.layer.lora_A.weight": (4, 4),  # ignored by mflux, so ignored here
    })
    result = ernie.run(_with_lora(ernie, lora)).raise_for_status().returned
    assert (result.width, result.height) == (64, 64)


def test_real_model_lora_shapes_are_checked_against_the_real_dims():
    from kiapi_ernie import loras
    from kiapi_ernie.variants import REAL_ARCH

    ok = {"transformer.layers.35.mlp.gate_proj.lora_A.weight": {"shape": [16, 4096]},
          "transformer.layers.35.mlp.gate_proj.lora_B.weight": {"shape": [12288, 16]},
          "transformer.text_proj.lora_A.weight": {"shape": [16, 3072]},
          "transformer.text_proj.lora_B.weight": {"shape": [4096, 16]},
          "transformer.adaln_modulation.lora_A.weight": {"shape": [16, 4096]},
          "transformer.adaln_modulation.lora_B.weight": {"shape": [24576, 16]}}
    assert loras.fit_problems(ok, REAL_ARCH, what="f", model="m") == []
    bad = {"transformer.layers.36.self_attention.to_q.lora_A.weight": {"shape": [16, 4096]},
           "transformer.layers.36.self_attention.to_q.lora_B.weight": {"shape": [4096, 16]}}
    (problem,) = loras.fit_problems(bad, REAL_ARCH, what="f", model="ERNIE-Image")
    assert "ERNIE-Image has 36 blocks" in problem


def test_lora_misfit_on_the_loaded_model_is_400_and_leaves_it_untouched(ernie_cache_dir, tmp_path):
    """The backstop when a LoRA reaches the model unchecked: InvalidInput, never a 500, and the
    loaded model is unwrapped again."""
    import mlx.core as mx

    from kiapi_ernie.adapters import strip
    from kiapi_ernie.capability import CAPABILITY
    from kiapi_ernie.runtime import load

    runtime = load(model=CAPABILITY.models[0], quantize=8, demo=True, cache_dir=ernie_cache_dir)
    wrong_width = tmp_path / "w.safetensors"
    mx.save_safetensors(str(wrong_width), {"transformer.layers.0.self_attention.to_q.lora_A.weight": mx.zeros((4, 128)),
                                           "transformer.layers.0.self_attention.to_q.lora_B.weight": mx.zeros((64, 4))})
    unrelated = tmp_path / "u.safetensors"
    mx.save_safetensors(str(unrelated), {"unet.down.0.lora_A.weight": mx.zeros((4, 4))})
    for path, expected in ((wrong_width, "layers.0.self_attention.to_q"), (unrelated, "applies to no layer")):
        with pytest.raises(InvalidInput, match=expected), runtime.loras([(path.name, str(path))], [1.0]):
            pass
        assert strip(runtime.model.transformer) == 0  # nothing left wrapped
    runtime.close()


def test_image_strength_follows_the_contract_lower_keeps_more(ernie, ernie_files, ernie_helpers):
    """Contract (and diffusers/A1111): lower image_strength = closer to the input. mflux's is the
    opposite; at 0.1 the output must depend on the input far more than at 0.9."""
    from kiapi_ernie.runtime import mflux_image_strength

    assert mflux_image_strength(1.0, 8) == 0.0 and int(8 * mflux_image_strength(0.0, 8)) == 7
    assert int(8 * mflux_image_strength(0.4, 8)) == 4 and int(50 * mflux_image_strength(0.4, 50)) == 30
    assert all(1 <= int(n * mflux_image_strength(x / 10, n)) <= n - 1 for n in (2, 8, 50) for x in range(10))
    inputs = [ernie_files(ernie_helpers.png((64, 64), color), f"{i}.png", "image/png")
              for i, color in enumerate(((250, 250, 250), (0, 0, 0)))]

    def spread(strength: float) -> float:
        outs = [_pixels(ernie.run("edit", EditRequest(prompt="x", image=FileIDRef(file_id=f.file_id), width=64,
                                                      height=64, steps=8, seed=5, image_strength=strength))
                        .raise_for_status())[2] for f in inputs]
        return _diff(*outs)

    close, far, ignored = spread(0.1), spread(0.9), spread(1.0)
    assert close > 2 * far and ignored == 0.0  # 1.0 ignores the input: one txt2img


def test_edit_keeps_the_input_aspect_ratio_when_size_is_omitted(ernie, ernie_files, ernie_helpers):
    from kiapi_ernie.settings import ErnieSettings
    from kiapi_ernie.validation import edit_size

    settings = ErnieSettings()
    assert edit_size((1600, 900), None, None, settings) == (1360, 768)  # 16:9 at ~1024^2 pixels
    assert edit_size((900, 1600), None, None, settings) == (768, 1360)
    assert edit_size((1000, 1000), None, None, settings) == (1024, 1024)
    assert edit_size((4000, 1000), 512, None, settings) == (512, 128)
    assert edit_size((4000, 1000), None, 64, settings) == (256, 64)
    harness = ernie_helpers.harness(demo=True, default_width=64, default_height=64)
    wide = harness.store(ernie_helpers.png((96, 48)), "wide.png", "image/png")
    job = harness.run("edit", EditRequest(prompt="x", image=FileIDRef(file_id=wide.file_id), steps=2, seed=1))
    result = job.raise_for_status().returned
    assert (result.width, result.height) == (96, 48) == _pixels(job)[1]  # non-square img2img runs


def test_missing_hugging_face_weights_is_503_with_the_activate_command(tmp_path, monkeypatch):
    from kiapi_ernie.capability import CAPABILITY
    from kiapi_ernie.runtime import load

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"), raising=False)
    with pytest.raises(WeightsMissing) as info:
        load(model=CAPABILITY.models[0], quantize=8, demo=False, cache_dir=tmp_path)
    assert "kiapi activate ernie:turbo" in info.value.detail and "KIAPI_ERNIE_TURBO_PATH" in info.value.detail


@pytest.mark.parametrize("bits", [3, 5, 6])
def test_lora_applies_at_3_5_and_6_bits(ernie, ernie_files, tmp_path, bits):
    """A 3/5/6-bit QuantizedLinear's input width is cols * 32 / bits (not cols * (32 // bits))."""
    from kiapi_ernie.loras import quantized_input_width
    from kiapi_ernie.tiny import make_tiny_lora

    assert [quantized_input_width(4096 * b // 32, b) for b in (3, 4, 5, 6, 8)] == [4096] * 5
    lora = ernie_files(make_tiny_lora(tmp_path / "l.safetensors").read_bytes(), "l.safetensors")
    plain = ernie.run("generate", _gen(quantize=bits)).raise_for_status()
    job = ernie.run("generate", _gen(quantize=bits, loras=[LoraRef(file=FileIDRef(file_id=lora.file_id))]))
    job.raise_for_status()
    assert job.runtime_calls == [{"quantize": bits}]
    assert _diff(_pixels(plain)[2], _pixels(job)[2]) > 0.5


def test_a_pre_quantized_directory_is_recorded_with_its_stored_bits(ernie_cache_dir, tmp_path):
    """mflux keeps the bits a saved directory was quantized to, whatever `quantize` asks."""
    from mflux.models.common.config import ModelConfig
    from mflux.models.ernie_image import ErnieImage

    from kiapi_ernie.runtime import BoundedCache, stored_bits
    from kiapi_ernie.tiny import ensure_tiny_dir, tiny_construct

    with tiny_construct():
        ErnieImage(quantize=4, model_path=str(ensure_tiny_dir(ernie_cache_dir)),
                   model_config=ModelConfig.ernie_image_turbo()).save_model(str(tmp_path / "q4"))
        reloaded = ErnieImage(quantize=8, model_path=str(tmp_path / "q4"), model_config=ModelConfig.ernie_image_turbo())
    assert stored_bits(reloaded, 8) == 4
    cache = BoundedCache(2)  # the prompt cache: least recently used dropped first
    cache["a"], cache["b"] = 1, 2
    assert cache["a"] == 1
    cache["c"] = 3
    assert list(cache) == ["a", "c"]
