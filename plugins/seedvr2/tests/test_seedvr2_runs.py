"""Real mflux runs on the tiny random-weight models (inputs <= 32 px), through the handler."""

from __future__ import annotations

import io
import sys

import pytest
from PIL import Image

from kiapi_core.errors import JobCanceled

pytestmark = pytest.mark.slow
PHASES = ["encoding", "upscaling", "decoding", "colour correction", "saving"]  # then the core's "done"


def _decode(job, result) -> Image.Image:
    return Image.open(io.BytesIO(job.read(result.file_id)))


def test_2x_upscales_16_to_32_png(seedvr2):
    result, job = seedvr2.run({"resolution": "2x", "seed": 7})
    assert (result.input_width, result.input_height, result.width, result.height) == (16, 16, 32, 32)
    image = _decode(job, result)
    assert image.format == "PNG" and image.size == (32, 32)
    assert result.image_bytes == len(job.read(result.file_id)) == job.artifacts[0].record.size
    assert job.artifacts[0].content_type == "image/png" and job.artifacts[0].filename.endswith(".png")
    assert result.model == "3b"
    file_id = job.inputs["image"].file_id
    assert result.params == {"model": "3b", "resolution": "2x", "softness": 0.0, "seed": 7, "quantize": 8,
                             "format": "png", "quality": 90, "image": {"type": "file_id", "file_id": file_id},
                             "image_file_id": file_id, "demo": True,
                             "note": "demo mode: tiny random-weight model, the output is noise"}
    assert result.timings.total_s > 0
    assert job.warnings == []  # the core adds the one demo-mode warning per job, not the plugin
    assert job.metrics["run_s"] > 0


def test_progress_labels_in_order_and_never_complete_before_decoding(seedvr2):
    _, job = seedvr2.run({"seed": 1})
    assert [x for x in job.labels if x != "loading"] == PHASES
    assert (job.job.progress, job.job.progress_label) == (1.0, "done")
    fractions = [f for f, _ in job.events if f is not None]
    assert fractions == sorted(fractions) and max(fractions) < 1.0
    at = {label: f for f, label in job.events if label}
    assert at["encoding"] < at["upscaling"] < at["decoding"] < at["colour correction"] < at["saving"] < 1.0
    assert {"encoding_s", "upscaling_s", "decoding_s", "colour_correction_s"} <= set(job.metrics)


def test_integer_target_sets_the_short_side(seedvr2):
    image = seedvr2.image(24, 16)
    result, job = seedvr2.run({"resolution": 32, "seed": 3}, image)
    assert (result.width, result.height) == (48, 32) == _decode(job, result).size
    assert result.params["resolution"] == 32
    text, _ = seedvr2.run({"resolution": "32", "seed": 3}, image)
    assert text.params["resolution"] == 32 and (text.width, text.height) == (48, 32)


def test_same_seed_reproduces_and_softness_changes_the_output(seedvr2):
    image = seedvr2.image(16, 16)
    a, job_a = seedvr2.run({"seed": 11}, image)
    b, job_b = seedvr2.run({"seed": 11}, image)
    soft, job_soft = seedvr2.run({"seed": 11, "softness": 0.8}, image)
    assert job_a.read(a.file_id) == job_b.read(b.file_id)
    assert job_soft.read(soft.file_id) != job_a.read(a.file_id)
    assert soft.params["softness"] == 0.8 and (soft.width, soft.height) == (32, 32)


@pytest.mark.parametrize(("name", "variant"), [("7b", "7b"), ("seedvr2-7b", "7b"), ("SEEDVR2-7B", "7b"),
                                               ("seedvr2", "3b"), ("seedvr2-3b", "3b"), (None, "3b")])
def test_variants_and_aliases(seedvr2, name, variant):
    body = {"seed": 2} if name is None else {"seed": 2, "model": name}
    prepared = seedvr2.prepare(body, seedvr2.image(16, 16))
    assert prepared.model.name == variant and prepared.params["model"] == variant


def test_7b_runs(seedvr2):
    result, job = seedvr2.run({"model": "seedvr2-7b", "seed": 5})
    assert result.model == "7b" and result.params["model"] == "7b" and (result.width, result.height) == (32, 32)
    assert ("seedvr2", "7b", 8) in seedvr2.host.models.resident_keys()
    runtime = job.runtimes[-1]
    assert runtime.variant == "7b" and runtime.model.transformer.use_output_ada is False  # the 7B architecture


def test_quantize_override_builds_a_transient_model(seedvr2):
    result, job = seedvr2.run({"quantize": 4, "seed": 5, "format": "jpeg", "quality": 70})
    assert result.params["quantize"] == 4 and (result.width, result.height) == (32, 32)
    assert job.loads == [{"quantize": 4}]  # a q4 instance next to the q8 resident: transient
    assert job.runtimes[0].model is None  # closed by the core when the job ended
    assert ("seedvr2", "3b", 4) not in seedvr2.host.models.resident_keys()
    assert _decode(job, result).format == "JPEG" and job.artifacts[0].content_type == "image/jpeg"
    result, job = seedvr2.run({"quantize": 8, "seed": 5, "format": "webp"})
    assert job.runtime_calls == [{"quantize": 8}] and job.loads in ([], [{"quantize": 8}])  # the resident one
    assert ("seedvr2", "3b", 8) in seedvr2.host.models.resident_keys() and job.runtimes[0].model is not None
    assert _decode(job, result).format == "WEBP"


def test_resident_model_is_quantized_to_8_bits(seedvr2):
    _, job = seedvr2.run({"seed": 1})
    runtime = job.runtimes[0]
    assert ("seedvr2", "3b", 8) in seedvr2.host.models.resident_keys()
    assert runtime.quantize == 8 and runtime.model.bits == 8


def test_cancel_at_the_dit_callback_and_model_stays_usable(seedvr2):
    with pytest.raises(JobCanceled):
        seedvr2.run({"seed": 1}, cancel_on="upscaling")
    with pytest.raises(JobCanceled):
        seedvr2.run({"seed": 1}, cancel_on="decoding")
    result, _ = seedvr2.run({"seed": 1})
    assert (result.width, result.height) == (32, 32)


def test_tiled_vae_reports_every_tile_and_cancels_between_tiles(seedvr2):
    """Small tiles make mflux tile the 64 px output, as it does beyond 512 px with real sizes."""
    from mflux.models.common.vae.tiling_config import TilingConfig

    from kiapi_seedvr2.runtime import tile_counts

    tiling = TilingConfig(vae_encode_tile_size=32, vae_encode_tile_overlap=8, vae_decode_tile_size=32,
                          vae_decode_overlap=1)
    image = seedvr2.image(32, 32)
    runtime = seedvr2.run({"seed": 1})[1].runtimes[0]  # the resident 3b model
    saved = runtime.model.tiling_config
    runtime.model.tiling_config = tiling
    calls = {"encode": 0, "decode": 0}
    try:
        wrapped_encode, wrapped_decode = runtime.model.vae.encode, runtime.model.vae.decode

        def count(kind, fn):
            def inner(x):
                calls[kind] += 1
                return fn(x)
            return inner

        runtime.model.vae.encode = count("encode", wrapped_encode)
        runtime.model.vae.decode = count("decode", wrapped_decode)
        result, job = seedvr2.run({"seed": 4}, image)
        assert (result.width, result.height) == (64, 64)
        assert (calls["encode"], calls["decode"]) == tile_counts(64, 64, tiling) == (9, 9)
        assert [x for x in job.labels if x != "loading"] == PHASES
        labels = [label for _, label in job.events]
        encoding = job.events[labels.index("encoding") + 1:labels.index("upscaling")]
        decoding = job.events[labels.index("decoding") + 1:labels.index("colour correction")]
        assert len(encoding) == 9 and len(decoding) == 9  # one report per tile
        # a cancel during the encode is honoured at the next tile
        with pytest.raises(JobCanceled):
            seedvr2.run({"seed": 4}, image, cancel_on="encoding")
        runtime.model.vae.encode, runtime.model.vae.decode = wrapped_encode, wrapped_decode
    finally:
        runtime.model.tiling_config = saved


def test_measured_peak_stays_under_the_estimate(seedvr2):
    """Measured here, by the test, the way the core measures a job (the plugin never touches
    MLX's counters)."""
    import mlx.core as mx
    import msgspec

    from kiapi_seedvr2.capability import estimate_upscale_gb
    from kiapi_seedvr2.schemas import UpscaleParams

    image = seedvr2.image(32, 24)
    seedvr2.run({"resolution": "2x", "seed": 9}, image)  # the resident model is loaded
    mx.reset_peak_memory()
    before = mx.get_active_memory()
    _, job = seedvr2.run({"resolution": "2x", "seed": 9}, image)
    request_peak_gb = (mx.get_peak_memory() - before) / 1e9
    assert 0 < request_peak_gb <= estimate_upscale_gb(msgspec.convert(job.params, UpscaleParams), job.model)


def test_the_plugin_never_resets_or_reads_mlx_memory_counters(seedvr2, monkeypatch):
    import mlx.core as mx

    seedvr2.run({"seed": 1})  # load first: the core's own loader measurement is not the plugin's

    def core_only(name, real):
        """The core's memory accounting (begin_job/end_job) reads them; nothing under it may."""
        def call(*args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_globals.get("__name__", "").startswith("kiapi_core.memory"):
                return real(*args, **kwargs)
            pytest.fail(f"the plugin called mx.{name}")
        return call

    for name in ("reset_peak_memory", "get_peak_memory", "get_active_memory"):
        monkeypatch.setattr(mx, name, core_only(name, getattr(mx, name)))
    result, job = seedvr2.run({"seed": 1})
    assert (result.width, result.height) == (32, 32)
    assert not {"peak_memory_gb", "request_peak_gb"} & set(job.metrics)
    assert {"run_s", "encoding_s", "upscaling_s", "decoding_s", "colour_correction_s"} <= set(job.metrics)


@pytest.mark.parametrize(("size", "resolution", "warned"), [
    ((16, 16), "1.5x", "'1.5x' of a 16 px short side is 24 px, which mflux floors to a multiple of 16 (16 px)"),
    ((32, 24), "1x", "not larger than the 32x24 input"),
    ((32, 24), 16, "use an integer target above 24 (e.g. 48)"),
    ((16, 16), "2x", None),
])
def test_output_not_larger_than_the_input_is_warned(seedvr2, size, resolution, warned):
    result, job = seedvr2.run({"resolution": resolution, "seed": 1}, seedvr2.image(*size))
    if warned is None:
        assert job.warnings == []
    else:
        assert len(job.warnings) == 1 and warned in job.warnings[0]
        assert f"{result.width}x{result.height} output is not larger" in job.warnings[0]
