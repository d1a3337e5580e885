"""The CPU-backend guard: without it mlx kills SeedVR2 runs with SIGFPE; with it they complete.

The crash kills the interpreter, so the proof runs in subprocesses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from kiapi_seedvr2 import guard

SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from types import SimpleNamespace
    from PIL import Image
    from kiapi_seedvr2 import guard, tiny
    root = Path(sys.argv[1]); mode = sys.argv[2]
    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "in.png")
    if mode == "loader":   # the product path: the loader installs the guard
        from kiapi_seedvr2.capability import build_capability
        from kiapi_seedvr2.runtime import load
        model = build_capability(demo=True).models[0]
        runtime = load(model=model, quantize=8, settings=None, demo=True, cache_dir=root)
        assert guard.is_installed()
        image, _ = runtime.upscale(root / "in.png", resolution="2x", softness=0.0, seed=1)
    else:                  # bare mflux, no guard
        from mflux.models.seedvr2 import SeedVR2
        from mflux.utils.scale_factor import ScaleFactor
        path = tiny.ensure_tiny_weights(root, "3b")
        with tiny.tiny_construction():
            model = SeedVR2(quantize=8, model_path=str(path), model_config=tiny.model_config_for("3b"))
        assert not guard.is_installed()
        image = model.generate_image(seed=1, image_path=root / "in.png", resolution=ScaleFactor.parse("2x")).image
    print("SIZE", image.size)
""")


def _run(tmp_path, mode: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLX_DISABLE_COMPILE="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1",
               TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), mode], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


needs_cpu = pytest.mark.skipif(not guard.needs_guard(), reason="MLX runs on a GPU here; the crash is CPU-only")


@needs_cpu
@pytest.mark.slow
def test_seedvr2_crashes_with_sigfpe_without_the_guard(tmp_path):
    proc = _run(tmp_path, "bare")
    assert proc.returncode == -signal.SIGFPE, (proc.returncode, proc.stderr[-2000:])


@pytest.mark.slow
def test_a_run_through_the_loader_completes(tmp_path):
    proc = _run(tmp_path, "loader")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "SIZE (32, 32)" in proc.stdout


def test_guard_is_needed_on_this_cpu_backend_and_idempotent():
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.cpu:
        assert guard.needs_guard()
    assert guard.install_cumsum_guard(force=True)
    first = mx.cumsum
    assert guard.install_cumsum_guard(force=True) and mx.cumsum is first and guard.is_installed()


def test_guarded_cumsum_semantics():
    import mlx.core as mx

    guard.install_cumsum_guard(force=True)
    empty = mx.cumsum(mx.zeros((0,), dtype=mx.int32))
    assert empty.shape == (0,)
    assert mx.cumsum(mx.array([1, 2, 3])).tolist() == [1, 3, 6]
    assert mx.cumsum(mx.zeros((2, 0)), axis=1).shape == (2, 0)
    assert mx.cumsum(mx.array([[1, 2], [3, 4]]), axis=0).tolist() == [[1, 2], [4, 6]]
