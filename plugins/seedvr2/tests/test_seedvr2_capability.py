"""The declaration: variants, aliases, weights, settings, memory estimates, loader contract."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kiapi_core.errors import WeightsMissing
from kiapi_core.registry import Registry
from kiapi_seedvr2.capability import REVISION, build_capability, estimate_upscale_gb
from kiapi_seedvr2.schemas import UpscaleParams
from kiapi_seedvr2.settings import Seedvr2Settings


def test_variants_aliases_and_operation():
    cap = build_capability()
    assert (cap.name, cap.domain, cap.settings) == ("seedvr2", "image", Seedvr2Settings)
    models = {m.name: m for m in cap.models}
    assert models["3b"].default and not models["7b"].default
    assert models["3b"].aliases == ("seedvr2-3b", "seedvr2") and models["7b"].aliases == ("seedvr2-7b",)
    assert all(m.features == ("image", "upscale") and m.resident_quantize == 8 for m in cap.models)
    (op,) = cap.operations
    assert (op.name, op.job_type, op.inputs) == ("upscale", "seedvr2", {"image": "image"})
    assert op.produces == ("image/png", "image/jpeg", "image/webp")
    registry = Registry()
    registry.add(cap, plugin="seedvr2", distribution="kiapi-seedvr2")
    assert registry.resolve_model("seedvr2", "SeedVR2-7B").name == "7b"
    assert registry.resolve_model("seedvr2", None).name == "3b"


def test_each_variant_downloads_only_its_own_files():
    models = {m.name: m for m in build_capability().models}
    for variant, model in models.items():
        (weights,) = model.weights
        assert weights.repo == "numz/SeedVR2_comfyUI" and weights.revision == REVISION
        assert weights.patterns == (f"seedvr2_ema_{variant}_fp16.safetensors", "ema_vae_fp16.safetensors")
        assert weights.local_dir_setting == f"path_{variant}"
        assert weights.local_dir_setting in Seedvr2Settings.__struct_fields__
    assert models["7b"].weights_gib[8] > models["3b"].weights_gib[8] > models["3b"].weights_gib[4]
    assert set(models["3b"].weights_gib) == {None, 3, 4, 5, 6, 8}


def test_revision_and_file_names_match_mflux():
    from mflux.models.common.config import ModelConfig
    from mflux.models.common.resolution.model_revisions import ModelRevisions
    from mflux.models.seedvr2.weights.seedvr2_weight_definition import SeedVR2WeightDefinition

    from kiapi_seedvr2 import capability

    assert ModelRevisions.get(capability.REPO) == capability.REVISION
    for variant, config in (("3b", ModelConfig.seedvr2_3b()), ("7b", ModelConfig.seedvr2_7b())):
        model = next(m for m in build_capability().models if m.name == variant)
        assert list(model.weights[0].patterns) == SeedVR2WeightDefinition.resolve(config).get_download_patterns()


def test_demo_declares_no_downloads():
    assert all(m.weights == () and m.info["demo"] for m in build_capability(demo=True).models)


def estimate(sizes, model):
    """The estimate of an upscale sized as ``sizes`` says (``check`` sets these fields)."""
    params = UpscaleParams(model=model.name, resolution="2x", softness=0.0, seed=1, quantize=8, format="png",
                           quality=90, image={"type": "file_id", "file_id": "f"}, **sizes)
    return estimate_upscale_gb(params, model)


def test_estimate_grows_with_the_output_and_saturates_the_vae_tile():
    model = next(m for m in build_capability().models if m.name == "3b")
    def sized(w, h, iw=256, ih=256):
        return {"width": w, "height": h, "input_width": iw, "input_height": ih}

    small = estimate(sized(512, 512), model)
    mid = estimate(sized(768, 768), model)
    big = estimate(sized(2048, 2048), model)
    assert 0 < small < mid < big
    k = model.info["estimate"]
    assert big - mid == pytest.approx(k["gb_per_mpx"] * (2048**2 - 768**2) / 1e6, abs=0.01)  # tile term saturated
    # unsized: assume a 2048x2048 output from an input as large
    assert estimate({}, model) == estimate(sized(2048, 2048, 2048, 2048), model)
    seven = next(m for m in build_capability().models if m.name == "7b")
    assert estimate({"width": 768, "height": 768}, seven) > mid


def test_estimate_counts_the_input_pixels():
    """A 100 MP input asked for a 16 px output is not admitted on its output size alone."""
    from kiapi_seedvr2.capability import INPUT_GB_PER_MPX

    model = next(m for m in build_capability().models if m.name == "3b")
    tiny_output = {"width": 16, "height": 16}
    small_in = estimate({**tiny_output, "input_width": 16, "input_height": 16}, model)
    huge_in = estimate({**tiny_output, "input_width": 10_000, "input_height": 10_000}, model)
    assert huge_in - small_in == pytest.approx(INPUT_GB_PER_MPX * (100 - 0.000256), abs=0.001)
    assert huge_in > 1.2


def test_plugin_import_stays_light():
    code = ("import sys, kiapi_seedvr2, kiapi_seedvr2.capability, kiapi_seedvr2.validation; "
            "heavy = [m for m in ('mlx', 'mflux', 'torch', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_register_hook_uses_demo_from_host_settings():
    from types import SimpleNamespace

    import kiapi_seedvr2

    got = []
    kiapi_seedvr2.register_capabilities(register=got.append, host=SimpleNamespace(settings=SimpleNamespace(demo=True)))
    assert got[0].name == "seedvr2" and got[0].models[0].info["demo"] is True


def test_loader_rejects_options(seedvr2_cache_dir):
    from kiapi_seedvr2.runtime import load

    with pytest.raises(TypeError, match="no load options"):
        load(model=build_capability(demo=True).models[0], quantize=8, demo=True, cache_dir=seedvr2_cache_dir,
             lora_paths=["x"])


@pytest.mark.parametrize("where", ["empty_dir", "hub"])
def test_missing_weights_raise_503_with_the_fix(tmp_path, where):
    from kiapi_seedvr2.runtime import load

    settings = Seedvr2Settings(path_3b=str(tmp_path)) if where == "empty_dir" else Seedvr2Settings()
    with pytest.raises(WeightsMissing) as err:
        load(model=build_capability().models[0], quantize=8, settings=settings, demo=False, cache_dir=tmp_path)
    assert err.value.status == 503
    assert "kiapi activate seedvr2:3b" in err.value.detail and "KIAPI_SEEDVR2_PATH_3B" in err.value.detail


def test_tiny_weights_are_built_once_and_atomically(tmp_path):
    from kiapi_seedvr2.tiny import ensure_tiny_weights

    first = ensure_tiny_weights(tmp_path, "7b")
    stamp = (first / "seedvr2_ema_7b_fp16.safetensors").stat().st_mtime_ns
    assert ensure_tiny_weights(tmp_path, "7b") == first
    assert (first / "seedvr2_ema_7b_fp16.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # no temporary leftovers


def test_tiny_swap_is_scoped_and_wrappers_are_per_instance(seedvr2):
    from mflux.models.seedvr2.model.seedvr2_vae.vae import SeedVR2VAE
    from mflux.models.seedvr2.seedvr2_initializer import SeedVR2Initializer

    from kiapi_seedvr2 import tiny

    original = SeedVR2Initializer.__dict__["_init_models"]
    with pytest.raises(RuntimeError), tiny.tiny_construction():
        assert SeedVR2Initializer.__dict__["_init_models"] is not original
        raise RuntimeError("boom")
    assert SeedVR2Initializer.__dict__["_init_models"] is original
    runtime = seedvr2.run({"seed": 1})[1].runtimes[0]  # the resident 3b model
    assert SeedVR2VAE.encode is not runtime.model.vae.encode
    assert SeedVR2VAE().encode.__func__ is SeedVR2VAE.encode  # a fresh VAE is untouched


def test_an_mflux_saved_directory_counts_as_present(tmp_path):
    """`mflux-save` writes transformer/ and vae/ shards, not the repo's two file names."""
    from kiapi_core.weights import status
    from kiapi_seedvr2.capability import build_capability
    from kiapi_seedvr2.settings import Seedvr2Settings

    capability = build_capability()
    model = next(m for m in capability.models if m.name == "3b")
    for sub in ("transformer", "vae"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "0.safetensors").write_bytes(b"x" * 16)
    found = status(capability, model, Seedvr2Settings(path_3b=str(tmp_path)))
    assert found.state == "present" and found.missing == [], found.missing
    (tmp_path / "vae" / "0.safetensors").unlink()
    missing = status(capability, model, Seedvr2Settings(path_3b=str(tmp_path)))
    assert missing.state != "present" and any("seedvr2_ema_3b_fp16.safetensors" in m for m in missing.missing)
