"""Declaration, registration, tiny-model fixture and memory estimates."""

from __future__ import annotations

import subprocess
import sys

import msgspec
import pytest

from kiapi_core.registry import Registry
from kiapi_core.sdk import RequestContext
from kiapi_ernie import memory
from kiapi_ernie.capability import CAPABILITY, build_capability, memory_examples, resolved_params
from kiapi_ernie.params import EditParams, GenerateParams, TrainParams
from kiapi_ernie.settings import ErnieSettings


def test_import_is_light():
    code = ("import sys, kiapi_ernie, kiapi_ernie.capability; "
            "print(sorted(m for m in ('mlx', 'mflux', 'PIL', 'torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_hook_registers_the_capability(ernie_host):
    import kiapi_ernie

    got = []
    kiapi_ernie.register_capabilities(register=got.append, host=ernie_host)
    (capability,) = got
    registry = Registry()
    registry.add(capability, plugin="ernie", distribution="kiapi-ernie")
    assert registry.resolve_model("ernie", None).name == "turbo"
    for alias, name in (("ERNIE-IMAGE-TURBO", "turbo"), ("baidu/ERNIE-Image", "base"), ("ernie-image", "base")):
        assert registry.resolve_model("ernie", alias).name == name
    ops = {op.name: op for op in capability.operations}
    assert {n: o.job_type for n, o in ops.items()} == {"generate": "ernie", "edit": "ernie-edit", "train": "ernie-train"}
    assert ops["train"].always_async and ops["edit"].inputs == {"image": "image", "loras[].file": "file"}
    assert capability.settings is ErnieSettings


def test_models_declare_weights_and_memory():
    turbo, base = CAPABILITY.models
    assert turbo.default and not base.default and turbo.features == ("text", "image")
    assert turbo.resident_quantize == 8 and turbo.loader == "kiapi_ernie.runtime:load"
    (weights,) = turbo.weights
    assert weights.repo == "baidu/ERNIE-Image-Turbo" and weights.revision.startswith("bc68c81e")
    assert weights.local_dir_setting == "turbo_path" and "tokenizer/**" in weights.patterns
    assert base.weights[0].revision.startswith("5346b31d") and base.weights[0].local_dir_setting == "base_path"
    assert turbo.weights_gib[None] > turbo.weights_gib[8] > turbo.weights_gib[4] > turbo.weights_gib[3]
    assert 11 < turbo.weights_gib[8] < 12  # GiB, as the core counts
    assert build_capability(ErnieSettings(resident_quantize=4)).models[0].resident_quantize == 4
    # info holds only what the core reads (kiapi models, GET /v1/memory, the 503 hint)
    assert turbo.info == {"resident_quantize_chosen_by": "default",
                          "resident_quantize_setting": "KIAPI_ERNIE_RESIDENT_QUANTIZE"}


def _params(operation: str, demo: bool = False, **body):
    """The params Struct ``prepare`` resolves for ``body`` (the estimates' input), on turbo."""
    file = {"type": "file_id", "file_id": "example"}
    defaults = {"train": {"dataset": file}, "edit": {"prompt": "x", "image": file}}.get(operation, {"prompt": "x"})
    params = resolved_params(CAPABILITY.models[0], operation, {**defaults, **body})
    kind = {"generate": GenerateParams, "edit": EditParams, "train": TrainParams}[operation]
    return msgspec.convert({**params, "demo": demo or None}, kind)


def _ctx():
    return RequestContext(capability="ernie", model=CAPABILITY.models[0])


def test_estimates_scale_with_size_cfg_and_training_resolution():
    def generate(**body) -> float:
        return memory.estimate_generate(_params("generate", **body), _ctx())

    small = generate(width=512, height=512)
    large = generate(width=1024, height=1024)
    cfg = generate(width=1024, height=1024, guidance=4.0)
    more_steps = generate(width=1024, height=1024, steps=50)
    assert small < large < cfg and large <= more_steps < large * 1.1
    assert memory.estimate_edit(_params("edit", width=1024, height=1024), _ctx()) >= large
    lora = msgspec.structs.replace(_params("generate", width=1024, height=1024), lora_mb=75.0)
    assert memory.estimate_generate(lora, _ctx()) > large
    t512 = memory.estimate_train(_params("train", max_resolution=512, quantize=8), _ctx())
    assert memory.estimate_train(_params("train", max_resolution=1024, quantize=8), _ctx()) > t512 > memory.weights_gib(8)
    assert memory.estimate_train(_params("train", max_resolution=512, quantize=8, batch_size=2), _ctx()) > t512


def test_memory_examples_are_recorded_params_of_each_operation():
    """``kiapi models --budget-gb`` sizes these through the operations' estimates: each must be
    a complete params record of its operation, resolved as a request would be."""
    examples = memory_examples(CAPABILITY.models[0])
    kinds = {"generate": GenerateParams, "edit": EditParams, "train": TrainParams}
    for label, operation, params in examples:
        typed = msgspec.convert(params, kinds[operation])
        assert typed.model == "turbo" and typed.quantize == 8, label
    assert [label for label, _, _ in examples][-2:] == ["train 512 (low_ram)", "train 512"]


def test_tiny_swap_is_scoped_and_restored_on_error(ernie_cache_dir):
    from mflux.models.ernie_image.ernie_image_initializer import ErnieImageInitializer

    from kiapi_ernie import tiny

    original = ErnieImageInitializer.__dict__["_init_models"]
    with pytest.raises(ZeroDivisionError), tiny.tiny_construct():
        assert ErnieImageInitializer.__dict__["_init_models"] is not original
        raise ZeroDivisionError
    assert ErnieImageInitializer.__dict__["_init_models"] is original
    # the cached directory is reused, not rebuilt
    first = tiny.ensure_tiny_dir(ernie_cache_dir)
    stamp = (first / "transformer").stat().st_mtime_ns
    assert tiny.ensure_tiny_dir(ernie_cache_dir) == first and (first / "transformer").stat().st_mtime_ns == stamp
    assert not [p for p in ernie_cache_dir.iterdir() if p.name.startswith(".tiny-ernie-")]


def test_assert_tiny_catches_a_full_size_model():
    from types import SimpleNamespace

    from kiapi_ernie.tiny import assert_tiny

    with pytest.raises(RuntimeError, match="tiny ERNIE expected"):
        assert_tiny(SimpleNamespace(transformer=SimpleNamespace(hidden_size=4096, layers=[0] * 36)))


def test_demo_estimates_are_tiny():
    assert memory.estimate_generate(_params("generate", demo=True, width=64, height=64, steps=2), _ctx()) < 0.1
    assert memory.estimate_edit(_params("edit", demo=True, width=64, height=64, steps=2), _ctx()) < 0.1
    assert memory.estimate_train(_params("train", demo=True, max_resolution=512, quantize=8), _ctx()) < 1
