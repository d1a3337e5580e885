"""ModelManager with fake runtimes whose sizes we choose and a fake backend we control.

The fake backend is the allocator: a fake runtime "allocates" its size on load and frees it on
close(), and a job's work allocates its peak and frees it, so measured numbers are exact.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from kiapi_core.errors import MemoryBudgetExceeded, StartupError
from kiapi_core.memory import GIB, ModelManager, parse_warmup
from kiapi_core.memory.observations import MARGIN
from kiapi_core.registry import Capability, Model, Operation, Registry
from kiapi_core.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.freed_caches = 0

    def alloc(self, gb: float) -> int:
        n = int(gb * GIB)
        self.active += n
        self.peak = max(self.peak, self.active)
        return n

    def free(self, n: int) -> None:
        self.active -= n

    def active_bytes(self) -> int:
        return self.active

    def reset_peak(self) -> None:
        self.peak = self.active

    def peak_bytes(self) -> int:
        return self.peak

    def free_caches(self) -> None:
        self.freed_caches += 1


class FakeRuntime:
    def __init__(self, backend: FakeBackend, name: str, quantize: int | None, gb: float, options: dict) -> None:
        self.backend, self.name, self.quantize, self.options = backend, name, quantize, options
        self.bytes = backend.alloc(gb)
        self.closed = False

    def close(self) -> None:
        self.backend.free(self.bytes)
        self.closed = True


class Env:
    """A registry with two capabilities, a manager and a loader that records what it built."""

    def __init__(self, tmp_path: Path, *, budget: float = 10.0, ttl: float = 100.0, demo: bool = False,
                 real_sizes: dict[str, float] | None = None) -> None:
        self.backend = FakeBackend()
        self.clock = Clock()
        self.loads: list[FakeRuntime] = []
        self.real_sizes = real_sizes or {}
        self.fail_next_load = False
        loader = self.load
        self.a = Model(name="a", default=True, loader=loader, resident_quantize=8,  # type: ignore[arg-type]
                       weights_gib={8: 4.0, 4: 2.0, None: 8.0}, priority=0)
        self.b = Model(name="b", aliases=("bee",), loader=loader, resident_quantize=8,  # type: ignore[arg-type]
                       weights_gib={8: 4.0}, priority=0)
        self.c = Model(name="c", loader=loader, resident_quantize=None,  # type: ignore[arg-type]
                       weights_gib={None: 2.0}, priority=5)
        self.gen = Operation(name="generate", request=dict, result=None, handler=lambda job: None,
                             job_type="image.generate", estimate=lambda params, model: params.get("peak", 1.0))
        self.cap = Capability(name="pix", domain="image", title="Pix", models=(self.a, self.b, self.c),
                              operations=(self.gen,))
        self.other = Capability(name="other", domain="image", title="Other",
                                models=(Model(name="b", loader=loader, weights_gib={None: 1.0}),))
        self.registry = Registry()
        self.registry.add(self.cap, plugin="pix", distribution="kiapi-pix")
        self.registry.add(self.other, plugin="other", distribution="kiapi-other")
        self.settings = Settings(memory_limit_gb=budget, model_ttl_s=ttl, data_dir=str(tmp_path))
        self.manager = ModelManager(settings=self.settings, registry=self.registry,
                                    plugin_settings=lambda family: {"family": family},
                                    cache_dir=lambda family: tmp_path / family, demo=demo,
                                    clock=self.clock, backend_for=lambda model: self.backend)

    def load(self, *, model: Model, quantize: int | None, settings: Any, demo: bool, cache_dir: Path,
             **options: Any) -> FakeRuntime:
        assert settings == {"family": "pix"} or settings == {"family": "other"}
        if self.fail_next_load:
            self.fail_next_load = False
            self.backend.alloc(0.5)  # a half-built model leaks until collected
            raise RuntimeError("weights are corrupt")
        gb = self.real_sizes.get(model.name, model.weights_gib.get(quantize, 1.0))
        runtime = FakeRuntime(self.backend, model.name, quantize, gb, options)
        self.loads.append(runtime)
        return runtime

    def run(self, job_id: str, model: Model, *, peak: float = 1.0, work: float | None = None,
            quantize: Any = ..., fail: bool = False, **options: Any) -> dict[str, Any]:
        """One job on the 'worker': begin, acquire, do `work` GB of work, end.

        By default the work is what makes the plugin's estimate exact after the correction's
        10 % margin (peak / 1.1), so observations leave later estimates unchanged.
        """
        m = self.manager
        params: dict[str, Any] = {"peak": peak}
        if quantize is not ...:
            params["quantize"] = quantize
        m.begin_job(job_id, self.cap, model, self.gen, params)
        ok = False
        try:
            runtime = m.acquire(job_id, self.cap, model, quantize, options)
            assert runtime is not None
            used = self.backend.alloc(peak / MARGIN if work is None else work)
            self.backend.free(used)
            if fail:
                raise RuntimeError("handler failed")
            ok = True
        finally:
            metrics = m.end_job(job_id, succeeded=ok)
        return metrics

    def keys(self) -> list[tuple[str, str, int | None]]:
        return sorted(self.manager.resident_keys(), key=str)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


def test_resident_is_loaded_once_and_reused(env: Env) -> None:
    metrics = env.run("j1", env.a, peak=1.0)
    assert metrics["load_gb"] == pytest.approx(4.0)
    assert metrics["peak_gb"] == pytest.approx(1.0 / MARGIN, abs=1e-4)
    assert metrics["estimate_gb"] == pytest.approx(1.0)
    metrics = env.run("j2", env.a, peak=1.0)
    assert metrics["load_gb"] == 0
    assert len(env.loads) == 1
    stats = env.manager.stats()
    assert stats["budget_gb"] == 10.0 and stats["budget_source"] == "setting"
    [row] = stats["resident"]
    assert (row["family"], row["model"], row["quantize"]) == ("pix", "a", 8)
    assert row["measured_gb"] == pytest.approx(4.0) and row["size_gb"] == pytest.approx(4.0)
    assert row["in_use"] == [] and row["idle_s"] == 0.0 and row["expires_in_s"] == 100.0
    assert stats["reservations"] == [] and stats["running"] is None


def test_eviction_lowest_priority_first_then_least_recently_used(env: Env) -> None:
    # Budget 10: c (priority 5, 2 GB) + a (4 GB) resident; b needs 4 + 1 peak.
    env.run("j1", env.c, peak=0.5)
    env.clock.advance(10)
    env.run("j2", env.a, peak=0.5)
    env.clock.advance(10)
    env.run("j3", env.c, peak=0.5)   # c is now the most recently used
    assert env.keys() == [("pix", "a", 8), ("pix", "c", None)]
    env.run("j4", env.b, peak=1.0)   # 6 + 5 > 10: evict one; a has the lower priority
    assert env.keys() == [("pix", "b", 8), ("pix", "c", None)]
    a_runtime = env.loads[1]
    assert a_runtime.name == "a" and a_runtime.closed
    # Same priority: least recently used goes first.
    env.manager.unload("pix", "c")
    env.run("j5", env.a, peak=0.5)   # b + a = 8, fits with 0.5 peak
    env.clock.advance(5)
    env.run("j6", env.b, peak=0.5)   # b used more recently than a
    env.run("j7", env.c, peak=2.5)   # 8 + 2 + 2.5 > 10 → evict a (LRU), not b
    assert env.keys() == [("pix", "b", 8), ("pix", "c", None)]


def test_ttl_expiry_and_disable(env: Env, tmp_path: Path) -> None:
    env.run("j1", env.a)
    env.clock.advance(60)
    assert env.manager.sweep_idle() == []
    assert env.manager.stats()["resident"][0]["expires_in_s"] == 40.0
    env.clock.advance(40)
    assert env.manager.sweep_idle() == [("pix", "a", 8)]
    assert env.keys() == [] and env.loads[0].closed
    pinned = Env(tmp_path, ttl=0)
    pinned.run("j1", pinned.a)
    pinned.clock.advance(10**6)
    assert pinned.manager.sweep_idle() == []
    assert pinned.manager.stats()["resident"][0]["expires_in_s"] is None


def test_admit_refuses_what_can_never_fit_without_evicting(env: Env) -> None:
    env.run("j1", env.a)
    env.run("j2", env.c)
    before = env.keys()
    with pytest.raises(MemoryBudgetExceeded) as info:
        env.manager.admit(env.cap, env.b, env.gen, {"peak": 7.0})
    body = info.value.body()
    assert body["code"] == "memory_budget" and info.value.status == 503
    assert body["needed_gb"] == pytest.approx(11.0)
    assert body["budget_gb"] == 10.0
    assert body["resident_gb"] == pytest.approx(6.0)
    assert body["freeable_gb"] == pytest.approx(6.0)
    assert "smaller size" in body["hint"]
    assert env.keys() == before and not any(r.closed for r in env.loads)
    # What fits after eviction is admitted (admission never evicts): 4 weights + 5 peak.
    assert env.manager.admit(env.cap, env.b, env.gen, {"peak": 5.0}) == pytest.approx(9.0)
    assert env.keys() == before
    # A resident model needs no weights; an undeclared quantize counts the unquantized size.
    assert env.manager.admit(env.cap, env.a, env.gen, {"peak": 9.0}) == pytest.approx(9.0)
    # quantize null means the server default (resident here)
    assert env.manager.admit(env.cap, env.a, env.gen, {"peak": 3.0, "quantize": None}) == pytest.approx(3.0)
    with pytest.raises(MemoryBudgetExceeded) as info:
        env.manager.admit(env.cap, env.a, env.gen, {"peak": 3.0, "quantize": 16})
    assert "lower quantize (4, 8)" in info.value.body()["hint"]


def test_begin_job_refuses_without_evicting(env: Env) -> None:
    env.run("j1", env.a)
    with pytest.raises(MemoryBudgetExceeded):
        env.manager.begin_job("big", env.cap, env.b, env.gen, {"peak": 6.5})
    assert env.keys() == [("pix", "a", 8)] and not env.loads[0].closed
    assert env.manager.stats()["reservations"] == []
    # Not now: another job's reservation holds memory that eviction cannot free.
    env.manager.begin_job("running", env.cap, env.a, env.gen, {"peak": 5.0})
    with pytest.raises(MemoryBudgetExceeded) as info:
        env.manager.begin_job("next", env.cap, env.c, env.gen, {"peak": 1.0})
    assert "retry later" in info.value.detail
    assert info.value.body()["reserved_gb"] == pytest.approx(5.0)
    assert env.keys() == [("pix", "a", 8)]
    env.manager.end_job("running")


def test_reservation_visible_while_running_and_released_on_failure(env: Env) -> None:
    m = env.manager
    m.begin_job("j1", env.cap, env.a, env.gen, {"peak": 2.0})
    [res] = m.stats()["reservations"]
    assert res["job_id"] == "j1" and res["estimate_gb"] == 2.0 and res["pending_weights_gb"] == 4.0
    assert m.stats()["running"]["estimate_gb"] == 2.0
    loading: list[bool] = []
    m.acquire("j1", env.cap, env.a, 8, {}, on_loading=lambda: loading.append(True))
    assert loading == [True]
    [res] = m.stats()["reservations"]
    assert res["pending_weights_gb"] == 0 and res["total_gb"] == 2.0
    assert m.stats()["resident"][0]["in_use"] == ["j1"]
    m.end_job("j1", succeeded=False)
    assert m.stats()["reservations"] == [] and m.stats()["running"] is None
    assert m.end_job("j1") == {}  # idempotent
    # A load that raises: the reservation still goes away at end_job.
    env.fail_next_load = True
    m.begin_job("j2", env.cap, env.b, env.gen, {"peak": 1.0})
    with pytest.raises(RuntimeError):
        m.acquire("j2", env.cap, env.b, 8, {})
    assert m.stats()["reservations"][0]["loading_gb"] == 4.0
    m.end_job("j2", succeeded=False)
    assert m.stats()["reservations"] == [] and ("pix", "b", 8) not in env.keys()  # noqa: SIM118 - Env.keys(): loaded models
    assert m.stats()["observations"] == []  # failures teach nothing


def test_transients_are_reserved_shown_and_freed(env: Env) -> None:
    m = env.manager
    env.run("warm", env.a, peak=0.5)
    freed_before = env.backend.freed_caches
    # quantize override → a transient at 4 bits, never cached; the resident stays.
    m.begin_job("q", env.cap, env.a, env.gen, {"peak": 1.0, "quantize": 4})
    runtime = m.acquire("q", env.cap, env.a, 4, {})
    [res] = m.stats()["reservations"]
    assert res["transients"] == [{"model": "a", "quantize": 4, "gb": 2.0, "options": []}]
    assert res["total_gb"] == pytest.approx(3.0)
    metrics = m.end_job("q")
    assert runtime.closed and metrics["load_gb"] == pytest.approx(2.0)
    assert env.backend.freed_caches > freed_before
    assert env.keys() == [("pix", "a", 8)]
    # options (LoRA) → a transient at the resident quantization; the canceled job frees it too.
    m.begin_job("lora", env.cap, env.a, env.gen, {"peak": 1.0})
    lora = m.acquire("lora", env.cap, env.a, 8, {"lora_paths": ["x.safetensors"]})
    assert lora.options == {"lora_paths": ["x.safetensors"]} and lora is not env.loads[0]
    assert m.stats()["reservations"][0]["transients"][0]["options"] == ["lora_paths"]
    m.end_job("lora", succeeded=False)  # canceled
    assert lora.closed and m.stats()["reservations"] == []
    assert env.backend.active == int(4.0 * GIB)  # only the resident remains


def test_lora_transient_evicts_the_idle_resident_copy_when_needed(tmp_path: Path) -> None:
    env = Env(tmp_path, budget=9.0)
    env.run("warm", env.a, peak=0.5)
    env.manager.begin_job("lora", env.cap, env.a, env.gen, {"peak": 1.0})  # admitted: 4 + 1 ≤ 9
    runtime = env.manager.acquire("lora", env.cap, env.a, 8, {"lora_paths": ["x"]})  # 4+1+4 ≤ 9
    assert env.keys() == [("pix", "a", 8)]
    env.manager.end_job("lora")
    env.manager.begin_job("lora2", env.cap, env.a, env.gen, {"peak": 2.0})  # 4 + 2 ≤ 9
    runtime = env.manager.acquire("lora2", env.cap, env.a, 8, {"lora_paths": ["x"]})  # 4+2+4 > 9
    assert env.keys() == [] and env.loads[0].closed and not runtime.closed
    assert env.manager.stats()["accounted_high_water_gb"] <= 9.0
    env.manager.end_job("lora2")


def test_estimates_are_corrected_by_observations(env: Env) -> None:
    m = env.manager
    env.run("j1", env.a, peak=1.0, work=2.0)          # the plugin under-estimates by 2×
    assert m.admit(env.cap, env.a, env.gen, {"peak": 1.0}) == pytest.approx(2.2)
    assert m.admit(env.cap, env.a, env.gen, {"peak": 2.0}) == pytest.approx(4.4)
    metrics = env.run("j2", env.a, peak=1.0, work=2.0)
    assert metrics["estimate_gb"] == pytest.approx(2.2) and metrics["raw_estimate_gb"] == 1.0
    assert metrics["peak_gb"] == pytest.approx(2.0)
    [obs] = m.stats()["observations"]
    assert (obs["family"], obs["operation"], obs["model"], obs["count"]) == ("pix", "generate", "a", 2)
    assert obs["factor"] == pytest.approx(2.2)
    # Over-estimates are corrected down, never below half the plugin's number.
    env.run("k1", env.b, peak=4.0, work=0.4)
    assert m.admit(env.cap, env.b, env.gen, {"peak": 4.0}) == pytest.approx(2.0)
    # A failed run is not an observation.
    with pytest.raises(RuntimeError):
        env.run("k2", env.b, peak=2.0, work=6.0, fail=True)
    assert m.admit(env.cap, env.b, env.gen, {"peak": 4.0}) == pytest.approx(2.0)


def test_zero_estimate_learns_from_measured_peaks(env: Env) -> None:
    op = Operation(name="noest", request=dict, result=None, handler=lambda job: None, job_type="x")
    m = env.manager
    assert m.admit(env.cap, env.a, op, {}) == pytest.approx(4.0)  # weights only
    m.begin_job("j", env.cap, env.a, op, {})
    m.acquire("j", env.cap, env.a)
    env.backend.free(env.backend.alloc(3.0))
    m.end_job("j")
    assert m.admit(env.cap, env.a, op, {}) == pytest.approx(3.3)


def test_alternating_two_models_under_a_budget_for_one(tmp_path: Path) -> None:
    env = Env(tmp_path, budget=6.0)
    peaks = []
    for i in range(6):
        model = env.a if i % 2 == 0 else env.b
        metrics = env.run(f"j{i}", model, peak=1.5)
        peaks.append(metrics["peak_gb"])
        assert len(env.manager.resident_keys()) == 1
        assert env.manager.stats()["used_gb"] <= 6.0
        # The accounting matches what is really allocated once the job is over.
        assert env.backend.active == int(4.0 * GIB)
    assert len(env.loads) == 6 and all(r.closed for r in env.loads[:-1])
    assert peaks == [pytest.approx(1.5 / MARGIN, abs=1e-4)] * 6
    stats = env.manager.stats()
    assert stats["accounted_high_water_gb"] <= 6.0
    assert stats["accounted_high_water_gb"] == pytest.approx(5.5)


def test_measured_load_sizes_replace_declarations(tmp_path: Path) -> None:
    env = Env(tmp_path, real_sizes={"a": 3.0})
    env.run("j1", env.a)
    assert env.manager.stats()["resident"][0]["size_gb"] == pytest.approx(3.0)
    env.manager.unload("pix", "a")
    assert env.manager.admit(env.cap, env.a, env.gen, {"peak": 1.0}) == pytest.approx(4.0)  # 3 + 1
    # A measurement far below the declaration (lazy weights) is not trusted.
    lazy = Env(tmp_path, real_sizes={"a": 0.5})
    lazy.run("j1", lazy.a)
    row = lazy.manager.stats()["resident"][0]
    assert row["size_gb"] == 4.0 and row["measured_gb"] == pytest.approx(0.5)


def test_demo_mode_keeps_declared_numbers(tmp_path: Path) -> None:
    env = Env(tmp_path, demo=True, real_sizes={"a": 0.01})
    env.run("j1", env.a, peak=2.0, work=0.01)
    assert env.manager.stats()["resident"][0]["size_gb"] == 4.0
    assert env.manager.admit(env.cap, env.a, env.gen, {"peak": 2.0}) == pytest.approx(2.0)
    assert env.manager.stats()["observations"][0]["count"] == 1  # recorded, not applied


def test_models_in_use_and_the_jobs_own_model_are_never_evicted(tmp_path: Path) -> None:
    env = Env(tmp_path, budget=9.0)
    env.run("j1", env.a, peak=0.5)
    env.run("j2", env.b, peak=0.5)
    # a is resident and needed: evicting b suffices (and is the only choice).
    env.manager.begin_job("j3", env.cap, env.a, env.gen, {"peak": 4.5})
    assert env.keys() == [("pix", "a", 8)]
    env.manager.acquire("j3", env.cap, env.a)
    with pytest.raises(MemoryBudgetExceeded):
        env.manager.begin_job("j4", env.cap, env.c, env.gen, {"peak": 0.1})  # a is in use
    assert env.keys() == [("pix", "a", 8)]
    env.manager.end_job("j3")


def test_warm_unload_and_close(env: Env) -> None:
    row = env.manager.warm("pix", "BEE")
    assert (row["model"], row["quantize"], row["size_gb"]) == ("b", 8, 4.0)
    assert env.manager.stats()["reservations"] == [] and env.manager.stats()["observations"] == []
    env.manager.warm("pix", None)  # the default model
    assert env.keys() == [("pix", "a", 8), ("pix", "b", 8)]
    assert env.manager.unload("pix", "b") == [{"family": "pix", "model": "b", "quantize": 8, "size_gb": 4.0}]
    assert env.manager.unload("pix", "b") == []
    env.manager.close()
    assert env.keys() == [] and all(r.closed for r in env.loads)
    with pytest.raises(MemoryBudgetExceeded):
        Env(Path(env.settings.data_dir), budget=3.0).manager.warm("pix", "a")


def test_loader_strings_are_imported_lazily(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("kiapi_fake_loader_mod")
    module.load = env.load  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kiapi_fake_loader_mod", module)
    model = Model(name="s", loader="kiapi_fake_loader_mod:load", weights_gib={None: 1.0})
    cap = Capability(name="pix", domain="image", title="Pix", models=(model,))
    env.manager.begin_job("j", cap, model, None, {})
    runtime = env.manager.acquire("j", cap, model)
    assert runtime.name == "s"
    env.manager.end_job("j")


def test_parse_warmup(env: Env) -> None:
    assert parse_warmup(["pix:A", " pix:bee ", "other:b", "pix:a", ""], env.registry) == [
        ("pix", "a"), ("pix", "b"), ("other", "b")]
    assert env.manager.parse_warmup(["pix:c"]) == [("pix", "c")]
    with pytest.raises(StartupError) as info:
        parse_warmup(["b", "nope:a", "pix:zzz"], env.registry)
    text = str(info.value)
    assert "did you mean other:b or pix:b" in text
    assert "no capability 'nope'" in text
    assert "unknown pix model 'zzz'" in text


def test_warm_refuses_models_whose_weights_are_missing(tmp_path):
    """Warm-up and admin loads never start a download: missing weights are a 503 naming
    the activate command."""
    import msgspec as _msgspec

    from kiapi_core import Capability, Model, WeightFiles, WeightsMissing, hookimpl
    from kiapi_core.testing import build_test_host

    class Plugin:
        @hookimpl
        def register_capabilities(self, register):
            register(Capability(name="heavy", domain="image", title="Heavy", models=(Model(
                name="big", default=True, loader="nowhere:load", weights_gib={None: 1.0},
                weights=(WeightFiles(repo="org/not-downloaded", revision="0" * 40, patterns=("*.safetensors",)),)),)))

    host = build_test_host(tmp_path, plugins=[Plugin()], demo=False)
    with pytest.raises(WeightsMissing) as info:
        host.models.warm("heavy", "big")
    assert "kiapi activate heavy:big" in info.value.detail
    assert _msgspec.to_builtins(host.models.stats())["resident"] == []


def test_own_model_and_transient_jobs_may_evict_the_idle_resident_of_their_key(tmp_path: Path) -> None:
    """Training (own_model) and one-off copies share the resident's key but never run on it: an
    idle resident of that key is evicted for them like any other (issue #13: LoRA and training
    got 503 for the TTL after any plain request)."""
    env = Env(tmp_path, budget=9.0)
    env.run("plain", env.a, peak=0.5)
    assert env.keys() == [("pix", "a", 8)]
    train = Operation(name="train", request=dict, result=None, handler=lambda job: None, job_type="t",
                      estimate=lambda params, model: 8.0, own_model=True)
    env.manager.begin_job("train", env.cap, env.a, train, {})  # 4 resident + 8 > 9: evict a
    assert env.keys() == [] and env.manager.stats()["reservations"][0]["total_gb"] == 8.0
    env.manager.end_job("train")
    env.run("plain2", env.a, peak=0.5)
    copy = Operation(name="copy", request=dict, result=None, handler=lambda job: None, job_type="c",
                     estimate=lambda params, model: 2.0, transient=lambda params: True)
    env.manager.begin_job("copy", env.cap, env.a, copy, {})  # 4 resident + 2 + 4 (copy) > 9
    assert env.keys() == []
    env.manager.end_job("copy")
    # a job that runs on the resident keeps it (it is needed, not a victim)
    env.run("plain3", env.a, peak=0.5)
    env.manager.begin_job("big", env.cap, env.a, env.gen, {"peak": 4.5})
    assert env.keys() == [("pix", "a", 8)]
    env.manager.end_job("big")


def test_stats_list_each_models_resident_quantization(env: Env) -> None:
    rows = {(r["family"], r["model"]): r for r in env.manager.stats()["models"]}
    assert rows[("pix", "a")] == {"family": "pix", "model": "a", "resident_quantize": 8, "weights_gb": 4.0,
                                  "chosen_by": None}
