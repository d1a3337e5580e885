"""ruff and mypy stay clean: run by the README's test command, so CI fails on either.

mypy's cache goes to a temporary directory (the checkout stays clean); a cold run over
kiapi_core and the plugins takes ~25 s on two cores.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_ruff_is_clean():
    result = _run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_is_clean_over_the_core_and_the_plugins(tmp_path):
    # The files to check are configured in pyproject.toml ([tool.mypy] files).
    result = _run(str(BIN / "mypy"), "--cache-dir", str(tmp_path / "mypy-cache"))
    assert result.returncode == 0, result.stdout + result.stderr
