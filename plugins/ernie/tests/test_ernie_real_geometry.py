"""ERNIE-Image at real widths (one block, random weights, the published diffusers layout).

What the tiny model cannot show: the published key mapping and the text encoder's
``language_model.model.`` filter, LoRA widths of 3/5/6-bit layers 4096 and 12288 wide, the
resident LoRA path on real-width quantized layers, a training step, and memory per block
measured against the plugin's estimate functions (``kiapi_ernie.memory``).
"""

from __future__ import annotations

import pytest

from kiapi_ernie import geometry

pytestmark = pytest.mark.real_geometry

BITS = (3, 4, 5, 6, 8, None)
#: (module path, in, out) of the real-width layers a LoRA wraps: every distinct Linear shape.
TARGETS = (("layers.0.self_attention.to_q", 4096, 4096), ("layers.0.mlp.gate_proj", 4096, 12288),
           ("layers.0.mlp.linear_fc2", 12288, 4096), ("text_proj", 3072, 4096))


@pytest.fixture(scope="module")
def geometry_dir(tmp_path_factory):
    return geometry.write_dir(tmp_path_factory.mktemp("ernie-geometry"))


@pytest.fixture(scope="module")
def published_transformer(geometry_dir):
    """The transformer's parameters from the published file, through mflux's mapping (bf16)."""
    import mlx.core as mx
    from mflux.models.common.weights.mapping.weight_mapper import WeightMapper
    from mflux.models.ernie_image.weights.ernie_weight_mapping import ErnieWeightMapping

    published = mx.load(str(geometry_dir / "transformer" / "diffusion_pytorch_model.safetensors"))
    return WeightMapper.apply_mapping(hf_weights=published, mapping=ErnieWeightMapping.get_transformer_mapping(),
                                      num_layers=1)


def fresh_transformer(params):
    from mflux.models.ernie_image.model.ernie_transformer.transformer import ErnieTransformer

    transformer = ErnieTransformer(**geometry.TX)
    transformer.update(params)
    return transformer


@pytest.fixture(scope="module")
def resident(geometry_dir):
    """The q4 model as the resident runtime serves it (mflux's loader on the published layout)."""
    from kiapi_ernie.runtime import ErnieRuntime
    from kiapi_ernie.variants import TURBO

    runtime = ErnieRuntime(geometry.build(geometry_dir, quantize=4), variant=TURBO, quantize=4, demo=False,
                           source=str(geometry_dir))
    yield runtime
    runtime.close()


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    """A real-width PEFT adapter (rank 4) for every target, plus two tensors mflux cannot map."""
    import mlx.core as mx

    mx.random.seed(3)
    weights = {}
    for path, fan_in, fan_out in TARGETS:
        weights[f"transformer.{path}.lora_A.weight"] = mx.random.normal((4, fan_in)) * 0.01
        weights[f"transformer.{path}.lora_B.weight"] = mx.random.normal((fan_out, 4)) * 0.01
    weights["transformer.adaLN_modulation.1.lora_A.weight"] = mx.zeros((4, 4096))  # diffusers' own name
    weights["text_encoder.layers.0.self_attn.q_proj.lora_A.weight"] = mx.zeros((4, 3072))
    path = tmp_path_factory.mktemp("lora") / "real.safetensors"
    mx.save_safetensors(str(path), weights)
    return path


def test_published_layout_loads_through_mflux_mapping_and_filter(resident):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    model = resident.model
    assert model.bits == 4 and model.transformer.hidden_size == 4096 and len(model.transformer.layers) == 1
    assert isinstance(model.transformer.layers[0].mlp.gate_proj, nn.QuantizedLinear)
    names = [k for k, _ in tree_flatten(model.text_encoder.parameters())]
    assert names and all(n.startswith("language_model.model.") for n in names)  # no head, vision tower, projector
    assert model.vae.encoder.conv_in.weight.shape[-1] == 3  # OIHW in the file, OHWI after the mapping


def _wrapped(transformer, path):
    from mflux.models.common.lora.mapping.lora_loader import LoRALoader

    return LoRALoader._get_target_module(transformer, path)


def _check_lora_layers(transformer, scale: float) -> None:
    """Each wrapped real-width layer: base output + scale * x A B, on one token."""
    import mlx.core as mx

    for path, fan_in, fan_out in TARGETS:
        layer = _wrapped(transformer, path)
        assert hasattr(layer, "lora_A"), f"{path} was not wrapped"
        x = mx.random.normal((1, 1, fan_in)).astype(mx.bfloat16)
        expected = layer.linear(x) + scale * ((x @ layer.lora_A.astype(x.dtype)) @ layer.lora_B.astype(x.dtype))
        got = layer(x)
        assert got.shape == (1, 1, fan_out)
        assert mx.allclose(got.astype(mx.float32), expected.astype(mx.float32), atol=1e-2).item()


@pytest.mark.parametrize("bits", BITS)
def test_lora_applies_to_real_width_layers_at_every_quantization(published_transformer, adapter_file, bits):
    """mflux's quantization (group 64, as its WeightApplier) of the published layers; the resident LoRA path."""
    import mlx.nn as nn

    from kiapi_ernie.adapters import applied, read_adapter

    transformer = fresh_transformer(published_transformer)
    targets = {path for path, _, _ in TARGETS}
    if bits is not None:
        nn.quantize(transformer, group_size=64, bits=bits,
                    class_predicate=lambda path, module: path in targets and hasattr(module, "to_quantized"))
        assert _wrapped(transformer, "layers.0.mlp.linear_fc2").bits == bits
    with applied(transformer, [read_adapter("real", adapter_file)], [0.5]) as warnings:
        _check_lora_layers(transformer, 0.5)
    assert len(warnings) == 1 and "adaLN_modulation.1" in warnings[0] and "text_encoder" in warnings[0]
    assert not hasattr(_wrapped(transformer, "text_proj"), "lora_A")  # unwrapped after the block


def test_lora_on_the_resident_model_is_taken_off_after_the_job(resident, adapter_file):
    from kiapi_ernie.adapters import strip

    before = {path: _wrapped(resident.model.transformer, path) for path, _, _ in TARGETS}
    with resident.loras([("real", str(adapter_file))], [1.0]) as (warnings, nbytes, read):
        assert read == 1 and nbytes > 0 and warnings
        _check_lora_layers(resident.model.transformer, 1.0)
    assert {path: _wrapped(resident.model.transformer, path) for path, _, _ in TARGETS} == before
    assert strip(resident.model.transformer) == 0
    with resident.loras([("real", str(adapter_file))], [1.0]) as (_, _, read):
        assert read == 0  # cached by file id: a warm LoRA request reads nothing


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_training_lora_layers_have_the_right_width_at_every_quantization(resident, bits):
    """mflux's LoRALinear.from_linear gets 3/5/6-bit widths wrong; the plugin's fix, with a gradient."""
    import mlx.core as mx
    import mlx.nn as nn
    from mflux.models.common.lora.layer.linear_lora_layer import LoRALinear

    from kiapi_ernie.training import quantized_lora_widths

    base = nn.QuantizedLinear(12288, 4096, group_size=64, bits=bits)
    with quantized_lora_widths():
        lora = LoRALinear.from_linear(base, r=4, scale=1.0)
    assert lora.lora_A.shape == (12288, 4)
    x = mx.random.normal((1, 2, 12288)).astype(mx.bfloat16)
    grads = mx.grad(lambda a: (x @ a.astype(x.dtype) @ lora.lora_B.astype(x.dtype)).astype(mx.float32).sum())(
        lora.lora_A)
    assert grads.shape == (12288, 4)
    assert lora(x).shape == (1, 2, 4096)


@pytest.mark.parametrize("bits", [4, 3])
def test_training_step_on_the_real_geometry_model(geometry_dir, tmp_path, bits):
    """A whole mflux TrainingRunner step at 4 and at 3 bits (3 crashed in mflux 0.24: LoRA width)."""
    import json

    from mflux.models.common.training.runner import TrainingRunner
    from PIL import Image

    from kiapi_ernie import trainconfig
    from kiapi_ernie.params import TrainParams
    from kiapi_ernie.training import _hooks, _Tracker

    (tmp_path / "data").mkdir()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "data" / "a.png")
    (tmp_path / "data" / "a.txt").write_text("a red apple")
    targets = [{"module_path": "layers.{block}.self_attention.to_q", "blocks": {"start": 0, "end": 1}, "rank": 4},
               {"module_path": "layers.{block}.mlp.linear_fc2", "blocks": {"start": 0, "end": 1}, "rank": 4}]
    params = TrainParams(kind="lora_train", model="turbo", dataset={"type": "file_id", "file_id": "f"}, seed=1,
                         steps=8, guidance=1.0, quantize=bits, max_resolution=16, low_ram=False, num_epochs=1,
                         batch_size=1, timestep_low=1, timestep_high=8, learning_rate=1e-4, save_frequency=None,
                         lora_rank=4, lora_include_ff=True, lora_layers={"targets": targets}, lora_layers_custom=True)
    config = trainconfig.build_config(params, mflux_name="ernie-image-turbo", model_path=str(geometry_dir),
                                      data="data", output_path=str(tmp_path / "out"))
    (tmp_path / "train.json").write_text(json.dumps(config))

    recorded = params

    class Job:
        params = recorded
        progress = metric = staticmethod(lambda *args: None)
        check_canceled = staticmethod(lambda: None)

    tracker = _Tracker(Job(), 1)
    with _hooks(tracker), geometry.geometry_construct():
        adapter, _ = TrainingRunner.train(config_path=str(tmp_path / "train.json"), resume_path=None)
    assert len(tracker.losses) == 1 and tracker.losses[0][1] == tracker.losses[0][1]  # one finite step
    assert adapter.transformer().layers[0].self_attention.to_q.linear.bits == bits


def test_block_memory_is_within_the_estimates(published_transformer):
    """One real-width bf16 block, measured by MLX, against memory.inference_block_gb /
    train_working_gb, and stacks of three blocks with and without gradient checkpointing against
    train_activations_gb: each estimate covers its measurement with a modest margin.
    (Activations do not depend on the weights' bits; bf16 runs far faster on the CPU backend.)"""
    import mlx.core as mx

    from kiapi_ernie import memory

    transformer = fresh_transformer(published_transformer)
    block = transformer.layers[0]
    h = w = 2  # few tokens keep it quick on CPU; per-token figures are the same at 20 and 68 tokens
    text = 4
    tokens = h * w + text
    cos, sin, mask = transformer.get_pos_encoding(1, h, w, text, mx.array([text]))
    x = (mx.random.normal((1, tokens, 4096)) * 0.1).astype(mx.bfloat16)
    temb = tuple((mx.random.normal((1, 1, 4096)) * 0.1).astype(mx.bfloat16) for _ in range(6))
    mx.eval(x, temb, cos, sin, mask, block.parameters())  # loaded lazily from the file: materialise first

    def measure(fn) -> float:
        mx.clear_cache()
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        out = fn()
        mx.eval(out)
        peak = mx.get_peak_memory() - base
        del out
        return peak / 2**30

    inference = measure(lambda: block(x, cos, sin, temb, mask))
    backward = measure(lambda: mx.grad(lambda v: block(v, cos, sin, temb, mask).astype(mx.float32).sum())(x))
    estimate_inference = memory.inference_block_gb(tokens)
    estimate_backward = memory.train_working_gb(tokens)
    assert inference <= estimate_inference <= 2 * inference, (inference, estimate_inference)
    assert backward <= estimate_backward <= 2 * backward, (backward, estimate_backward)

    # Three blocks deep (the same weights three times), as mflux runs them with and without
    # gradient checkpointing (low_ram): what memory.train_gb counts for each mode covers it.
    import mlx.nn as nn

    def stack(run):
        def loss(v):
            for _ in range(3):
                v = run(v, cos, sin, temb, mask)
            return v.astype(mx.float32).sum()
        return lambda: mx.grad(loss)(x)

    plain = measure(stack(block))
    checkpointed = measure(stack(nn.utils.checkpoint(block)))
    estimate_plain = memory.train_activations_gb(tokens, 3, checkpointing=False)
    estimate_checkpointed = memory.train_activations_gb(tokens, 3, checkpointing=True)
    assert checkpointed < plain <= estimate_plain <= 1.5 * plain, (plain, estimate_plain)
    assert checkpointed <= estimate_checkpointed <= 1.5 * checkpointed, (checkpointed, estimate_checkpointed)
