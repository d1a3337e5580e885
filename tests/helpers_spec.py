"""The wire contract for tests: ``spec/*.openapi.json`` of this repository (or KIAPI_SPEC_DIR)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def spec_document(name: str) -> dict[str, Any]:
    """Load a contract file; fail (never skip) when it is missing: the contract is the point."""
    env = os.environ.get("KIAPI_SPEC_DIR")
    path = ((Path(env) if env else REPO / "spec") / f"{name}.openapi.json").resolve()
    if not path.is_file():
        pytest.fail(f"contract file {path} is missing: the repository keeps it in spec/ (or set KIAPI_SPEC_DIR)")
    return json.loads(path.read_text(encoding="utf-8"))
