"""Documentation that must not drift from the code."""

import re
from pathlib import Path

import msgspec

from kiapi_core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_docs():
    text = (ROOT / "docs" / "settings.md").read_text()
    missing = [f"KIAPI_{f.name.upper()}" for f in msgspec.structs.fields(Settings)
               if f"`KIAPI_{f.name.upper()}`" not in text]
    assert missing == []


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^(python3 -m pip install uv && .*)$", readme, re.M)
    assert len(commands) == 2, commands
    test_command = next(c for c in commands if c.endswith("pytest"))
    assert any("--demo" in c for c in commands)
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci
