"""What runs on which Mac: the real declarations and the real ModelManager, for 16 to 128 GB.

Every case goes through the same steps as a request: the plugin's check (training's own 503),
admission at submission, then ``begin_job``/``acquire``/``end_job`` on a manager whose fake
allocator hands out exactly the declared weights (nothing is loaded). A case that is admitted
must also start when it reaches the model thread (no "503 not now" after a plain request); a
case that is refused must carry a hint that works: following it, the request is admitted.
The rendered table is docs/memory.md's "What runs on my Mac" (run this file to print it).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from kiapi_core.errors import MemoryBudgetExceeded
from kiapi_core.memory import GIB, ModelManager
from kiapi_core.memory.budget import resolve_budget
from kiapi_core.plugin_api import adapt
from kiapi_core.registry import Registry
from kiapi_core.settings import Settings

MACS = (16, 24, 32, 36, 48, 64, 96, 128)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "memory.md"
PLAIN = ("ernie", "turbo", "generate", {"width": 1024, "height": 1024})


@dataclass(frozen=True)
class Case:
    column: str
    family: str
    model: str
    operation: str
    params: dict[str, Any]
    after_plain: bool = False


def _ernie(model: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """The params the ernie plugin's ``prepare`` records for ``body`` (outside demo mode)."""
    from kiapi_ernie.capability import CAPABILITY, resolved_params

    return resolved_params(next(m for m in CAPABILITY.models if m.name == model), operation, body)


def _image(model: str, side: int, operation: str = "generate") -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": "x", "width": side, "height": side, "seed": 0}
    if operation == "edit":
        body["image"] = {"type": "file_id", "file_id": "example"}
    # quantize null: the resident model's (the budget chooses it), as a request omitting it
    return {**_ernie(model, operation, body), "quantize": None}


def _train(low_ram: bool) -> dict[str, Any]:
    return _ernie("turbo", "train", {"dataset": {"type": "file_id", "file_id": "example"}, "quantize": 8,
                                     "max_resolution": 512, "low_ram": low_ram})


def _upscale(model: str) -> dict[str, Any]:
    return {"model": model, "quantize": None, "resolution": "2x", "input_width": 1920, "input_height": 1080,
            "width": 3840, "height": 2160, "softness": 0.0, "seed": 1, "format": "png", "quality": 90,
            "image": {"type": "file_id", "file_id": "example"}}


CASES = (
    *(Case(f"{m} {s}²", "ernie", m, "generate", _image(m, s)) for m in ("turbo", "base") for s in (512, 1024, 2048)),
    Case("edit 1024²", "ernie", "turbo", "edit", _image("turbo", 1024, "edit")),
    Case("LoRA 1024² after plain", "ernie", "turbo", "generate", {**_image("turbo", 1024), "lora_mb": 75.0},
         after_plain=True),
    Case("train 512 after plain", "ernie", "turbo", "train", _train(False), after_plain=True),
    Case("train 512 low_ram after plain", "ernie", "turbo", "train", _train(True), after_plain=True),
    Case("SeedVR2 3b 1080p→4K", "seedvr2", "3b", "upscale", _upscale("3b")),
    Case("SeedVR2 7b 1080p→4K", "seedvr2", "7b", "upscale", _upscale("7b")),
)


def mac_budget_gb(mac_gb: int) -> float:
    return resolve_budget(Settings(), physical_bytes=mac_gb * GIB, platform="darwin").gb


class Allocator:
    """The fake MLX: a runtime "allocates" its declared weights; jobs allocate nothing."""

    name = "fake"

    def __init__(self) -> None:
        self.active = 0

    def active_bytes(self) -> int:
        return self.active

    def peak_bytes(self) -> int:
        return self.active

    def reset_peak(self) -> None:
        pass

    def free_caches(self) -> None:
        pass


class Runtime:
    def __init__(self, allocator: Allocator, gb: float) -> None:
        self.allocator, self.bytes = allocator, int(gb * GIB)
        allocator.active += self.bytes

    def close(self) -> None:
        self.allocator.active -= self.bytes


def build(budget_gb: float, ernie_settings: dict[str, Any] | None = None) -> tuple[ModelManager, Registry]:
    from kiapi_ernie.capability import build_capability as ernie_capability
    from kiapi_ernie.settings import ErnieSettings
    from kiapi_seedvr2 import capability as seedvr2

    platform, sys.platform = sys.platform, "darwin"  # the Metal estimates, as on a Mac
    try:
        upscale = seedvr2.build_capability()
    finally:
        sys.platform = platform
    allocator = Allocator()

    def load(*, model, quantize, **_: Any) -> Runtime:
        return Runtime(allocator, model.weights_gib[quantize])

    def with_fake_loader(capability: Any) -> Any:  # it stands in for mflux; declarations stay real
        return msgspec.structs.replace(capability, models=tuple(
            msgspec.structs.replace(m, loader=load) for m in capability.models))

    settings = Settings(memory_limit_gb=budget_gb, data_dir="/nonexistent")
    # what registering through the host does: plugin API 2 hooks are called with a RequestContext
    host = SimpleNamespace(settings=settings, plugin_settings=lambda name, spec=None: None)
    upscale = adapt(upscale, host)
    ernie = adapt(ernie_capability(ErnieSettings(**(ernie_settings or {})), budget_gb=budget_gb), host)
    registry = Registry()
    registry.add(with_fake_loader(ernie), plugin="ernie", distribution="kiapi-ernie")
    registry.add(with_fake_loader(upscale), plugin="seedvr2", distribution="kiapi-seedvr2")
    manager = ModelManager(settings=settings, registry=registry,
                           plugin_settings=lambda family: None, cache_dir=lambda family: Path("/nonexistent"),
                           demo=False, backend_for=lambda model: allocator)
    return manager, registry


def _parts(registry: Registry, family: str, model: str, operation: str) -> tuple[Any, Any, Any]:
    capability = registry.get(family)
    return (capability, registry.resolve_model(family, model),
            next(op for op in capability.operations if op.name == operation))


def run(manager: ModelManager, registry: Registry, family: str, model: str, operation: str,
        params: dict[str, Any], job_id: str) -> None:
    """One request end to end: plugin check (training), admission, then the model thread."""
    from kiapi_ernie.params import TrainParams
    from kiapi_ernie.validation import train_memory_problem

    capability, m, op = _parts(registry, family, model, operation)
    if operation == "train" and (problem := train_memory_problem(msgspec.convert(params, TrainParams),
                                                                 manager.budget.gb)):
        raise problem
    manager.admit(capability, m, op, params)
    manager.begin_job(job_id, capability, m, op, params)
    try:
        if not op.own_model:
            manager.acquire(job_id, capability, m, params.get("quantize") or m.resident_quantize)
    finally:
        manager.end_job(job_id)


def outcome(mac_gb: int, case: Case, ernie_settings: dict[str, Any] | None = None,
            params: dict[str, Any] | None = None, model: str | None = None) -> MemoryBudgetExceeded | None:
    manager, registry = build(mac_budget_gb(mac_gb), ernie_settings)
    if case.after_plain:
        family, name, operation, size = PLAIN
        run(manager, registry, family, name, operation, _image(name, size["width"]), "plain")
        assert manager.resident_keys(), "the plain request leaves its model resident"
    try:
        run(manager, registry, case.family, model or case.model, case.operation, params or case.params, "case")
    except MemoryBudgetExceeded as exc:
        # Refused at submission ("never"), not after queueing ("not now"): the user learns at once.
        assert "can never run here" in exc.detail, exc.detail
        return exc
    return None


def follow_hint(mac_gb: int, case: Case, refusal: MemoryBudgetExceeded) -> str:
    """Apply the refusal's first concrete suggestion and return what was applied (it must be admitted)."""
    hint = refusal.extra.get("hint") or ""
    if "smaller size with" not in hint and (setting := re.search(r"KIAPI_ERNIE_RESIDENT_QUANTIZE=(\d)", hint)):
        applied, result = setting.group(0), outcome(mac_gb, case, {"resident_quantize": int(setting.group(1))})
    elif refusal.extra.get("suggestion"):
        change = refusal.extra["suggestion"]
        applied, result = f"{change}", outcome(mac_gb, case, params={**case.params, **change})
    elif (lower := re.search(r"a lower quantize \(([\d, ]+)\)", hint)):
        bits = max(int(b) for b in lower.group(1).split(","))
        applied, result = f"quantize {bits}", outcome(mac_gb, case, params={**case.params, "quantize": bits})
    elif (variant := re.search(r"another variant: (\w+)", hint)):
        applied, result = variant.group(1), outcome(mac_gb, case, model=variant.group(1))
    else:
        smaller = {**case.params, "width": case.params["width"] // 2, "height": case.params["height"] // 2}
        applied, settings = "half the size", None
        if (both := re.search(r"smaller size with (KIAPI_ERNIE_RESIDENT_QUANTIZE=|quantize )(\d)", hint)):
            applied += f" and {both.group(1)}{both.group(2)}"
            if both.group(1) == "quantize ":
                smaller["quantize"] = int(both.group(2))
            else:
                settings = {"resident_quantize": int(both.group(2))}
        else:
            assert hint.startswith("Try a smaller size"), hint
        result = outcome(mac_gb, case, settings, params=smaller)
    assert result is None, f"{mac_gb} GB, {case.column}: following the hint ({applied}) still fails: {hint}"
    return applied


def resident_bits(mac_gb: int) -> str:
    _, registry = build(mac_budget_gb(mac_gb))
    turbo, base = (registry.resolve_model("ernie", name).resident_quantize for name in ("turbo", "base"))
    return f"q{turbo}" if turbo == base else f"q{turbo}/q{base}"


def render() -> str:
    """The markdown table of docs/memory.md."""
    head = ["Mac", "budget", "ERNIE resident", *(c.column for c in CASES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mac in MACS:
        cells = ["✓" if outcome(mac, case) is None else "503" for case in CASES]
        lines.append(f"| {mac} GB | {mac_budget_gb(mac):.2f} GB | {resident_bits(mac)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@pytest.mark.parametrize("mac_gb", MACS)
def test_every_case_is_admitted_when_it_fits_and_refused_with_a_working_hint(mac_gb: int) -> None:
    for case in CASES:
        refusal = outcome(mac_gb, case)
        if refusal is not None:
            follow_hint(mac_gb, case, refusal)


def test_a_16_gb_mac_runs_ernie_on_budget_chosen_weights() -> None:
    assert mac_budget_gb(16) == pytest.approx(10.67, abs=0.01) and resident_bits(16) == "q5"
    assert resident_bits(24) == "q8"
    turbo_1024 = next(c for c in CASES if c.column == "turbo 1024²")
    assert outcome(16, turbo_1024) is None
    lora = next(c for c in CASES if c.column.startswith("LoRA"))
    for mac in (16, 24, 32):  # used to be "503 not now" for 30 minutes after any plain request
        assert outcome(mac, lora) is None
    train = next(c for c in CASES if c.column == "train 512 after plain")
    refusal = outcome(32, train)  # used to be "503 not now": the idle resident was never evicted
    assert refusal is not None and "low_ram: true" in refusal.extra["hint"]
    assert outcome(32, next(c for c in CASES if c.column == "train 512 low_ram after plain")) is None
    assert outcome(36, train) is None


def test_2048_base_is_admitted_on_64_gb() -> None:
    """No S^2 attention matrix is counted: mx.fast.scaled_dot_product_attention never builds one."""
    assert outcome(64, next(c for c in CASES if c.column == "base 2048²")) is None


def test_docs_hold_the_current_table() -> None:
    table = render()
    assert table in DOCS.read_text(), "docs/memory.md's table is stale; run python tests/test_memory_table.py"


if __name__ == "__main__":
    print(render())
