"""Every request rule of generate / edit / train: 422 before anything is queued, with the fix."""

from __future__ import annotations

import msgspec
import pytest

from kiapi_core.errors import InvalidRequest
from kiapi_core.files.refs import FileDataURLRef, FileIDRef, FileURLRef
from kiapi_core.registry import Registry
from kiapi_ernie import validation
from kiapi_ernie.capability import CAPABILITY
from kiapi_ernie.params import GenerateParams, TrainParams
from kiapi_ernie.schemas import EditRequest, GenerateRequest, LoraRef, TrainRequest

_registry = Registry()
_registry.add(CAPABILITY, plugin="ernie", distribution="kiapi-ernie")
IMG = FileIDRef(file_id="file_img")
DS = FileIDRef(file_id="file_ds")


def _operation(host, name):
    """The operation as the host serves it: its plugin API 2 hooks adapted to the request path."""
    return next(op for op in host.registry.get("ernie").operations if op.name == name)


def prepare_generate(request, model, host):
    return _operation(host, "generate").prepare(request, model, host)


def prepare_edit(request, model, host):
    return _operation(host, "edit").prepare(request, model, host)


def prepare_train(request, model, host):
    return _operation(host, "train").prepare(request, model, host)


def _model(name=None):
    return _registry.resolve_model("ernie", name)


def _gen(**kw):
    return GenerateRequest(**{"prompt": "an owl", **kw})


def _problem(fn, request, host, model=None) -> str:
    with pytest.raises(InvalidRequest) as info:
        fn(request, _model(model), host)
    assert info.value.status == 422
    return info.value.detail


@pytest.mark.parametrize("kw, expected", [
    ({"width": 100}, "width must be a multiple of 16 (got 100); use 96 or 112"),
    ({"height": 1000}, "height must be a multiple of 16"),
    ({"width": 0}, "width must be a positive multiple of 16"),
    ({"width": -16}, "width must be a positive multiple of 16"),
    ({"width": 2064}, "width 2064 exceeds the cap 2048"),
    ({"height": 4096}, "KIAPI_ERNIE_MAX_HEIGHT"),
    ({"steps": 101}, "steps must be in 1..100 (got 101)"),
    ({"quantize": 7}, "quantize must be one of 3, 4, 5, 6, 8, or omitted for the resident model's q8; got 7"),
    ({"quantize": 2}, "quantize must be one of"),
    ({"prompt": "   "}, "prompt is empty"),
    ({"format": "gif"}, "format must be png, jpeg or webp"),
    ({"quality": 0}, "quality must be in 1..100"),
    ({"quality": 101}, "quality must be in 1..100"),
    ({"loras": [LoraRef(file=FileIDRef(file_id=f"f{i}")) for i in range(5)]}, "at most 4 loras may be applied (got 5)"),
    ({"loras": [LoraRef(file=FileIDRef(file_id="f"), scale=float("nan"))]}, "loras[0].scale"),
    ({"guidance": -1.0}, "guidance must be a finite number >= 0"),
    ({"guidance": float("inf")}, "guidance must be a finite number >= 0"),
    ({"seed": -5}, "seed must be an integer from 0 to 2**64-1"),
    ({"seed": 2**64}, "seed must be an integer from 0 to 2**64-1"),
    ({"scheduler": "os.system"}, "scheduler 'os.system' is not supported; use 'linear'"),
])
def test_generate_rules(kw, expected, ernie_host):
    assert expected in _problem(prepare_generate, _gen(**kw), ernie_host)


def test_all_problems_are_listed_at_once(ernie_host):
    with pytest.raises(InvalidRequest) as info:
        prepare_generate(_gen(width=100, steps=500, quantize=1), _model(), ernie_host)
    fields = [e["field"] for e in info.value.extra["errors"]]
    assert fields == ["width", "steps", "quantize"]


def test_generate_defaults_and_seed(ernie_host):
    params = prepare_generate(_gen(), _model(), ernie_host)
    assert (params["width"], params["height"], params["steps"], params["guidance"], params["quantize"]) == (
        1024, 1024, 8, 1.0, 8)
    assert 0 <= params["seed"] < 2**32 and params["transient"] is False and params["demo"] is True
    assert params["note"] == "demo mode: tiny random-weight model, the output is noise"
    base = prepare_generate(_gen(model="base"), _model("baidu/ERNIE-Image"), ernie_host)
    assert (base["model"], base["steps"], base["guidance"]) == ("base", 50, 4.0)
    assert prepare_generate(_gen(seed=5), _model(), ernie_host)["seed"] == 5
    assert prepare_generate(_gen(quantize=8), _model(), ernie_host)["transient"] is False
    assert prepare_generate(_gen(quantize=4), _model(), ernie_host)["transient"] is True


def test_settings_change_the_limits(ernie_helpers):
    host = ernie_helpers.host(demo=False, default_width=512, max_steps=10, max_loras=1)
    params = prepare_generate(_gen(), _model(), host)
    assert params["width"] == 512 and "demo" not in params and "note" not in params
    assert "steps must be in 1..10" in _problem(prepare_generate, _gen(steps=11), host)
    loras = [LoraRef(file=FileIDRef(file_id="a")), LoraRef(file=FileIDRef(file_id="b"))]
    assert "at most 1 loras" in _problem(prepare_generate, _gen(loras=loras), host)


def test_file_refs_are_summarised_never_echoed(ernie_host):
    loras = [LoraRef(file=FileURLRef(url="https://user:pw@example.com/a.safetensors?token=secret")),
             LoraRef(file=FileDataURLRef(data_url="data:application/octet-stream;base64,AAAA"), scale=0.5)]
    params = prepare_generate(_gen(loras=loras), _model(), ernie_host)
    assert params["loras"] == [
        {"file": {"type": "url", "url": "https://example.com/a.safetensors"}, "scale": 1.0},
        {"file": {"type": "data_url", "media_type": "application/octet-stream", "chars": 41}, "scale": 0.5},
    ]
    assert "secret" not in repr(params) and "AAAA" not in repr(params)


def _edit(**kw):
    return EditRequest(**{"prompt": "autumn", "image": IMG, **kw})


@pytest.mark.parametrize("kw, expected", [
    ({"image_strength": 1.5}, "image_strength must be in 0..1"),
    ({"image_strength": -0.1}, "image_strength must be in 0..1"),
])
def test_edit_rules(kw, expected, ernie_host):
    assert expected in _problem(prepare_edit, _edit(**kw), ernie_host)


@pytest.mark.parametrize("kw, expected", [
    ({"width": 512, "height": 768}, "KIAPI_ERNIE_EDIT_REQUIRE_SQUARE=0"),
    ({"width": 512}, "requires a square size"),  # height defaults to 1024
])
def test_edit_square_guard_when_turned_on(kw, expected, ernie_helpers):
    assert expected in _problem(prepare_edit, _edit(**kw), ernie_helpers.host(edit_require_square=True))


def test_edit_square_guard_is_off_by_default(ernie_host):
    params = prepare_edit(_edit(width=512, height=768), _model(), ernie_host)
    assert (params["width"], params["height"]) == (512, 768)
    ok = prepare_edit(_edit(), _model(), ernie_host)
    assert ok["image"] == {"type": "file_id", "file_id": "file_img"} and ok["image_strength"] == 0.4


def _train(**kw):
    return TrainRequest(**{"dataset": DS, **kw})


def test_train_defaults(ernie_host, ernie_helpers):
    p = prepare_train(_train(), _model(), ernie_host)
    assert (p["seed"], p["steps"], p["guidance"], p["quantize"], p["max_resolution"], p["low_ram"]) == (
        42, 8, 1.0, 8, 512, True)
    assert (p["num_epochs"], p["batch_size"], p["timestep_low"], p["timestep_high"]) == (10, 1, 1, 8)
    assert (p["learning_rate"], p["lora_rank"], p["save_frequency"]) == (1e-4, 16, None)
    targets = p["lora_layers"]["targets"]
    assert [t["module_path"] for t in targets] == [
        "layers.{block}.self_attention.to_q", "layers.{block}.self_attention.to_k",
        "layers.{block}.self_attention.to_v", "layers.{block}.self_attention.to_out.0", "text_proj"]
    assert targets[0]["blocks"] == {"start": 0, "end": 2}  # demo: the tiny model has 2 blocks
    real = prepare_train(_train(model="base", lora_include_ff=True), _model("base"),
                                    ernie_helpers.host(demo=False))
    assert (real["steps"], real["guidance"], real["timestep_high"]) == (50, 4.0, 50)
    paths = [t["module_path"] for t in real["lora_layers"]["targets"]]
    assert len(paths) == 12 and real["lora_layers"]["targets"][0]["blocks"] == {"start": 0, "end": 36}
    for name in ("mlp.gate_proj", "mlp.up_proj", "mlp.linear_fc2"):
        assert f"layers.{{block}}.{name}" in paths
    for name in ("time_embedding.linear_1", "time_embedding.linear_2", "adaln_modulation", "final_norm.linear"):
        assert name in paths


@pytest.mark.parametrize("kw, expected", [
    ({"steps": 0}, "steps must be in 1..100"),
    ({"guidance": -1.0}, "guidance must be a finite number >= 0"),
    ({"steps": 20, "timestep_high": 15}, "timestep_high <= 8, the turbo training schedule"),
    ({"quantize": 7}, "quantize must be one of 3, 4, 5, 6, 8"),
    ({"max_resolution": 8}, "max_resolution must be in 16..2048"),
    ({"max_resolution": 4096}, "KIAPI_ERNIE_MAX_TRAIN_RESOLUTION"),
    ({"timestep_low": 5, "timestep_high": 3}, "0 <= timestep_low < timestep_high <= 8"),
    ({"timestep_high": 9}, "timestep_high <= 8"),
    ({"learning_rate": 0.0}, "learning_rate must be in (0, 1]"),
    ({"learning_rate": float("inf")}, "learning_rate must be in (0, 1]"),
    ({"save_frequency": 0}, "save_frequency must be >= 1"),
    ({"lora_rank": 1000}, "lora_rank must be in 1..256"),
    ({"seed": -1}, "seed must be an integer from 0 to 2**64-1"),
    ({"lora_layers": {"targets": []}}, "non-empty targets list"),
    ({"lora_layers": {"targets": [{"module_path": "vae.encoder", "rank": 4}]}}, "is not an ERNIE LoRA target"),
    ({"lora_layers": {"targets": [{"module_path": "layers.{block}.self_attention.to_q", "rank": 4}]}}, "needs blocks"),
    ({"lora_layers": {"targets": [{"module_path": "layers.{block}.self_attention.to_q", "rank": 4,
                                   "blocks": {"start": 0, "end": 36}}]}}, "the model has 2 blocks"),
    ({"lora_layers": {"targets": [{"module_path": "text_proj", "rank": 0}]}}, "rank must be an integer"),
    ({"lora_layers": {"targets": [{"module_path": "text_proj", "rank": 4, "blocks": {"start": 0, "end": 1}}]}},
     "only applies to module paths with a {block}"),
    ({"lora_layers": {"targets": [{"module_path": "layers.5.mlp.up_proj", "rank": 4}]}}, "names block 5"),
])
def test_train_rules(kw, expected, ernie_host):
    assert expected in _problem(prepare_train, _train(**kw), ernie_host)


def test_train_custom_lora_layers_accepted(ernie_host):
    spec = {"targets": [{"module_path": "layers.{block}.mlp.gate_proj", "rank": 8, "blocks": {"indices": [1]},
                         "alpha": 8.0}, {"module_path": "final_linear", "rank": 4}]}
    params = prepare_train(_train(lora_layers=spec), _model(), ernie_host)
    assert params["lora_layers"] == spec and params["lora_layers_custom"] is True


@pytest.mark.parametrize("value, expected", [
    (99999999999999999999999, "width 99999999999999999999999 exceeds the cap 2048; use at most 2048"),
    (5000, "width 5000 exceeds the cap 2048; use at most 2048"),
    (2040, "width must be a multiple of 16 (got 2040); use 2032 or 2048"),
    (2047, "use 2032 or 2048"),
    (8, "width must be a multiple of 16 (got 8); use 16"),
])
def test_size_bounds_come_before_the_multiple_rule(value, expected, ernie_host):
    """Out-of-range sizes get the cap, not a 'multiple of 16' hint; hints stay within 16..cap."""
    detail = _problem(prepare_generate, _gen(width=value), ernie_host)
    assert expected in detail
    assert "2064" not in detail and "99999999999999999999984" not in detail


def test_size_hints_respect_a_cap_that_is_not_a_multiple_of_16(ernie_helpers):
    host = ernie_helpers.host(demo=True, max_width=1000)
    assert "use 992" in _problem(prepare_generate, _gen(width=995), host)
    assert "1008" not in _problem(prepare_generate, _gen(width=995), host)
    assert "use at most 992" in _problem(prepare_generate, _gen(width=1001), host)


@pytest.mark.parametrize("model, guidance", [("turbo", 3.0), ("turbo", 1.0), ("base", 7.5), ("turbo", 0.0)])
def test_any_finite_guidance_is_accepted(model, guidance, ernie_host):
    params = prepare_generate(_gen(guidance=guidance), _model(model), ernie_host)
    assert params["guidance"] == guidance


def test_guidance_warnings_say_what_mflux_does(ernie_host):
    def notes(model, **kw):
        params = prepare_generate(_gen(**kw), _model(model), ernie_host)
        return validation.guidance_warnings(msgspec.convert(params, GenerateParams))

    assert notes("turbo") == [] and notes("base") == [] and notes("base", guidance=1.0) == []
    (turbo,) = notes("turbo", guidance=3.0)
    assert "guidance-distilled" in turbo and "classifier-free guidance" in turbo and "'base'" in turbo
    (low,) = notes("base", guidance=0.5)
    assert "turns classifier-free guidance off" in low
    assert any("negative_prompt only applies" in n for n in notes("turbo", negative_prompt="blurry"))
    assert notes("base", negative_prompt="blurry") == []


def test_train_accepts_other_steps_and_guidance_and_records_what_runs(ernie_host):
    p = prepare_train(_train(steps=20, guidance=3.0), _model(), ernie_host)
    assert (p["steps"], p["guidance"], p["timestep_high"]) == (8, 1.0, 8)  # what mflux really uses
    assert (p["requested_steps"], p["requested_guidance"]) == (20, 3.0)
    notes = validation.train_warnings(msgspec.convert(p, TrainParams))
    assert len(notes) == 2 and "steps 20 was not used" in notes[0] and "guidance 3 was not used" in notes[1]
    same = prepare_train(_train(steps=8, guidance=1.0), _model(), ernie_host)
    assert "requested_steps" not in same and validation.train_warnings(msgspec.convert(same, TrainParams)) == []


def test_train_max_resolution_null_is_the_spec_default(ernie_host, ernie_helpers):
    assert prepare_train(_train(max_resolution=None), _model(), ernie_host)["max_resolution"] == 512
    small_cap = ernie_helpers.host(demo=True, max_train_resolution=256)
    assert prepare_train(_train(max_resolution=None), _model(), small_cap)["max_resolution"] == 256
    assert prepare_train(_train(max_resolution=1024), _model(), ernie_host)["max_resolution"] == 1024


def test_seeds_use_the_full_64_bit_range(ernie_host):
    top = 2**64 - 1
    assert prepare_generate(_gen(seed=top), _model(), ernie_host)["seed"] == top
    assert prepare_train(_train(seed=top), _model(), ernie_host)["seed"] == top
