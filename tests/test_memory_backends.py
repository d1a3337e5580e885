"""Budget resolution, the memory backends, and one real MLX measurement."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kiapi_core.memory import GIB, MlxBackend, ModelManager, RssBackend, backend_for_model, resolve_budget
from kiapi_core.memory.budget import physical_memory_bytes
from kiapi_core.registry import Capability, Model, Registry
from kiapi_core.settings import Settings


def test_budget_from_setting() -> None:
    budget = resolve_budget(Settings(memory_limit_gb=12.5), physical_bytes=16 * GIB)
    assert (budget.gb, budget.source, budget.physical_gb) == (12.5, "setting", 16.0)
    assert "KIAPI_MEMORY_LIMIT_GB" in budget.describe()
    assert "swap" in resolve_budget(Settings(memory_limit_gb=32), physical_bytes=16 * GIB).describe()
    with pytest.raises(ValueError):
        resolve_budget(Settings(memory_limit_gb=0))


def test_budget_share_of_physical_memory() -> None:
    linux = resolve_budget(Settings(), physical_bytes=64 * GIB, platform="linux")
    assert (linux.gb, linux.source, linux.share) == (48.0, "physical-share", 0.75)
    assert "75 % of physical memory" in linux.describe()
    small_mac = resolve_budget(Settings(), physical_bytes=24 * GIB, platform="darwin")
    large_mac = resolve_budget(Settings(), physical_bytes=64 * GIB, platform="darwin")
    assert small_mac.gb == pytest.approx(16.0) and large_mac.gb == pytest.approx(48.0)
    assert resolve_budget(Settings()).as_dict()["budget_gb"] > 0
    assert (physical_memory_bytes() or 0) > 0


def test_importing_the_memory_package_never_imports_mlx() -> None:
    code = textwrap.dedent("""
        import sys
        import kiapi_core.memory, kiapi_core.memory.routes
        from kiapi_core.memory import ModelManager, resolve_budget, backend_for_model
        from kiapi_core.settings import Settings
        resolve_budget(Settings()).describe()
        b = backend_for_model(None)
        b.reset_peak(); b.active_bytes(); b.peak_bytes(); b.free_caches()
        assert "mlx.core" not in sys.modules, sorted(m for m in sys.modules if m.startswith("mlx"))
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_backend_selection() -> None:
    assert backend_for_model(Model(name="x", info={"memory_backend": "rss"})).name == "rss"
    assert backend_for_model(Model(name="x", info={"memory_backend": "mlx"})).name == "mlx"
    assert backend_for_model(Model(name="x")).name in ("mlx", "rss")


def test_rss_backend_sees_an_allocation() -> None:
    backend = RssBackend()
    backend.reset_peak()
    before = backend.active_bytes()
    block = bytearray(64 * 1024 * 1024)  # touched: zero-filled pages are committed
    for i in range(0, len(block), 4096):
        block[i] = 1
    assert backend.active_bytes() - before > 32 * 1024 * 1024
    del block
    assert backend.peak_bytes() - before > 32 * 1024 * 1024
    backend.free_caches()


def test_mlx_backend_measures_a_real_allocation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLX_DISABLE_COMPILE", "1")
    mx = pytest.importorskip("mlx.core")
    backend = MlxBackend()
    mx.clear_cache()
    backend.reset_peak()
    base = backend.active_bytes()
    a = mx.ones((16, 1024, 1024), dtype=mx.float32)  # 64 MiB
    mx.eval(a)
    assert backend.active_bytes() - base == 64 * 1024 * 1024
    b = a * 2
    mx.eval(b)
    del a, b
    assert backend.active_bytes() - base <= 0
    assert backend.peak_bytes() - base >= 128 * 1024 * 1024
    backend.free_caches()

    # Through the manager: a loader that builds MLX arrays is measured, and so is the job's peak.
    class Runtime:
        def __init__(self) -> None:
            self.weights = mx.zeros((8, 1024, 1024), dtype=mx.float32)  # 32 MiB
            mx.eval(self.weights)

    def load(**_: object) -> Runtime:
        return Runtime()

    model = Model(name="tiny", loader=load, weights_gib={None: 0.05},  # type: ignore[arg-type]
                  info={"memory_backend": "mlx"})
    cap = Capability(name="mlxcap", domain="image", title="t", models=(model,))
    registry = Registry()
    registry.add(cap, plugin="t", distribution="t")
    manager = ModelManager(settings=Settings(memory_limit_gb=1.0, data_dir=str(tmp_path)), registry=registry,
                           plugin_settings=lambda f: None, cache_dir=lambda f: tmp_path, demo=False)
    manager.begin_job("j", cap, model, None, {})
    runtime = manager.acquire("j", cap, model)
    work = runtime.weights + 1  # another 32 MiB at the peak
    mx.eval(work)
    del work
    metrics = manager.end_job("j")
    assert metrics["memory_backend"] == "mlx"
    assert metrics["load_gb"] == pytest.approx(32 / 1024, rel=0.01)
    assert metrics["peak_gb"] == pytest.approx(32 / 1024, rel=0.05)
    [row] = manager.stats()["resident"]
    assert row["measured_gb"] == pytest.approx(32 / 1024, rel=0.01)
    before = backend.active_bytes()
    manager.close()
    del runtime
    import gc
    gc.collect()
    assert before - backend.active_bytes() == 32 * 1024 * 1024
    assert os.environ["MLX_DISABLE_COMPILE"] == "1"


def test_a_freed_model_costs_one_collection_and_a_plain_job_none(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection with mflux imported holds the GIL for 10-25 ms: the manager collects
    once when it frees a transient or an evicted model, and the RSS backend's free_caches
    (called after every job) does not collect again."""
    import gc

    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda *args: collections.append(1) or 0)
    closed: list[int] = []

    class Runtime:
        def close(self) -> None:
            closed.append(1)

    model = Model(name="m", loader=lambda **_: Runtime(), resident_quantize=8,  # type: ignore[arg-type]
                  weights_gib={8: 0.01, 4: 0.01}, info={"memory_backend": "rss"})
    cap = Capability(name="rsscap", domain="image", title="t", models=(model,))
    registry = Registry()
    registry.add(cap, plugin="t", distribution="t")
    manager = ModelManager(settings=Settings(memory_limit_gb=1.0, data_dir=str(tmp_path)), registry=registry,
                           plugin_settings=lambda f: None, cache_dir=lambda f: tmp_path, demo=False)
    manager.begin_job("plain", cap, model, None, {})
    manager.acquire("plain", cap, model)  # the resident q8
    assert manager.end_job("plain")["memory_backend"] == "rss"
    assert collections == []
    manager.begin_job("transient", cap, model, None, {"quantize": 4})
    manager.acquire("transient", cap, model, 4)  # another quantization: a one-off model
    manager.end_job("transient")
    assert closed == [1] and collections == [1]
    assert manager.unload("rsscap", "m") and closed == [1, 1] and collections == [1, 1]
