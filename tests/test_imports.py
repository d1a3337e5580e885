"""Importing the core or a plugin must not pull in heavy libraries; --help must import no plugin."""

import json
import subprocess
import sys

HEAVY = ("mlx", "mflux", "transformers", "torch", "PIL", "huggingface_hub", "psycopg")


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_importing_the_core_imports_nothing_heavy():
    assert _heavy(_modules_after("import kiapi_core, kiapi_core.host, kiapi_core.app")) == []


def test_building_a_host_with_all_installed_plugins_imports_nothing_heavy(tmp_path):
    code = (f"from kiapi_core.host import build_host\nfrom kiapi_core.settings import Settings\n"
            f"build_host(Settings(data_dir={str(tmp_path)!r}))")
    assert _heavy(_modules_after(code)) == []


def test_cli_help_imports_no_plugin_and_no_server():
    modules = _modules_after("from kiapi_core.cli import cli\ntry:\n    cli(['--help'])\nexcept SystemExit:\n    pass")
    assert not any(m.startswith(("kiapi_ernie", "kiapi_seedvr2", "hypercorn", "starlette", "kiapi_core.host"))
                   for m in modules)
