"""SeedVR2 3b at real widths (two DiT blocks, real VAE channels) in the published ComfyUI layout.

Loaded by mflux's real loader and quantizer; the weights it holds are measured by MLX and
compared with what the plugin declares (``Model.weights_gib``): quantizing gives the weights
SeedVR2's shared blocks use for both streams their own copies, ~11 % more than the bits say.
"""

from __future__ import annotations

import gc

import pytest

from kiapi_seedvr2 import geometry
from kiapi_seedvr2.capability import _QUANTIZED_SHARING, _VAE_GB, VAE_FILE, dit_file

pytestmark = pytest.mark.real_geometry


def _loaded_gb(root, quantize):
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()
    base = mx.get_active_memory()
    model = geometry.build(root, quantize=quantize)
    mx.eval(model.transformer.parameters())
    dit = (mx.get_active_memory() - base) / 2**30
    mx.eval(model.vae.parameters())
    vae = (mx.get_active_memory() - base) / 2**30 - dit
    shape = (model.transformer.vid_dim, len(model.transformer.blocks))
    del model
    gc.collect()
    return dit, vae, shape


def test_published_layout_loads_and_the_weights_match_the_declaration(tmp_path):
    root = geometry.write_dir(tmp_path / "3b")
    assert sorted(p.name for p in root.iterdir()) == sorted([dit_file("3b"), VAE_FILE])
    bf16_dit, vae, shape = _loaded_gb(root, None)
    assert shape == (2560, 2)  # real width, a multimodal and a shared block
    q8_dit, _, _ = _loaded_gb(root, 8)
    params_g = bf16_dit / 2  # bf16: 2 bytes per parameter
    per_param = q8_dit / params_g
    assert 8.5 / 8 < per_param <= _QUANTIZED_SHARING * 8.5 / 8 * 1.01, per_param
    assert vae <= _VAE_GB
