"""The plugin author docs stay true: every hook is documented, and the tutorial is the example.

* ``docs/plugins/hooks.md`` has a heading per hook in ``kiapi_core/hookspecs.py`` showing its
  name and arguments (``## register_capabilities(register, host)``), so a new hook without a
  reference section fails here (datasette's ``test_plugin_hooks_are_documented``).
* The tutorial's code blocks start with ``# file: <path>`` (the whole file) or
  ``# from file: <path>`` (a verbatim excerpt) and must match ``docs/examples/kiapi-pillow``;
  the whole-file blocks alone must make a working plugin.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kiapi_core.plugins import new_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "plugins"
EXAMPLE = ROOT / "docs" / "examples" / "kiapi-pillow"
_BLOCK = re.compile(r"^```[\w-]*\n(.*?)^```", re.S | re.M)
_TAG = re.compile(r"^# (file|from file): (\S+)\n")


def _hooks() -> dict[str, tuple[str, ...]]:
    pm = new_plugin_manager()
    return {name: getattr(pm.hook, name).spec.argnames for name in dir(pm.hook) if not name.startswith("_")}


def _headings() -> list[str]:
    return [line for line in (DOCS / "hooks.md").read_text().splitlines() if line.startswith("#")]


def _tagged_blocks() -> list[tuple[str, str, str]]:
    out = []
    for block in _BLOCK.findall((DOCS / "tutorial.md").read_text()):
        match = _TAG.match(block)
        if match:
            out.append((match.group(1), match.group(2), block[match.end():]))
    return out


@pytest.mark.parametrize("hook", sorted(_hooks()))
def test_every_hook_has_a_reference_section(hook):
    signature = f"{hook}({', '.join(_hooks()[hook])})"
    assert any(signature in heading for heading in _headings()), (
        f"docs/plugins/hooks.md needs a heading with `{signature}`")


def test_hook_reference_documents_no_hook_that_does_not_exist():
    documented = {m.group(1) for h in _headings() if (m := re.match(r"^## `?(\w+)\(", h))}
    assert documented == set(_hooks())


def test_tutorial_blocks_are_the_example_plugin_files():
    blocks = _tagged_blocks()
    assert blocks, "the tutorial has no tagged code blocks"
    for kind, path, text in blocks:
        actual = (EXAMPLE / path).read_text()
        if kind == "file":
            assert text == actual, f"tutorial block for {path} differs from docs/examples/kiapi-pillow/{path}"
        else:
            assert text in actual, f"tutorial excerpt of {path} is not in docs/examples/kiapi-pillow/{path}"


def test_tutorial_shows_every_file_of_the_package():
    shown = {path for kind, path, _ in _tagged_blocks() if kind == "file"}
    needed = {"pyproject.toml", *(str(p.relative_to(EXAMPLE)) for p in (EXAMPLE / "kiapi_pillow").glob("*.py"))}
    assert needed <= shown, f"the tutorial never shows {sorted(needed - shown)}"


def test_plugin_built_from_the_tutorial_alone_works(tmp_path):
    folder = tmp_path / "kiapi-pillow"
    for kind, path, text in _tagged_blocks():
        if kind == "file":
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_text(text)
    script = (
        "import sys, tempfile, kiapi_pillow\n"
        f"assert kiapi_pillow.__file__.startswith({str(folder)!r}), kiapi_pillow.__file__\n"
        "from kiapi_core.contract import assert_plugin_contract\n"
        "from kiapi_core.testing import build_test_host\n"
        "assert_plugin_contract('kiapi_pillow', compare_installed=False)\n"
        "host = build_test_host(tempfile.mkdtemp(), plugins=['kiapi_pillow'])\n"
        "print(sorted(op.name for op in host.registry.get('pillow').operations))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), *(p for p in sys.path if p)])}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['convert', 'resize']"


# --- the SDK reference (docs/plugins/sdk.md) ----------------------------------------------------

def _section(title: str) -> str:
    text = (DOCS / "sdk.md").read_text()
    start = text.index(f"### `{title}`")
    end = text.find("\n## ", start)
    following = text.find("\n### ", start + 1)
    stops = [s for s in (end, following) if s != -1]
    return text[start:min(stops)] if stops else text[start:]


@pytest.mark.parametrize("name", ["Capability", "Model", "Operation", "WeightFiles", "RequestContext"])
def test_every_declaration_field_is_documented(name):
    import msgspec

    from kiapi_core import sdk

    fields = [f.name for f in msgspec.structs.fields(getattr(sdk, name))]
    if name == "RequestContext":
        fields += ["file_ids", "demo_note"]
    section = _section(name)
    missing = [f for f in fields if f"| `{f}` |" not in section]
    assert missing == [], f"docs/plugins/sdk.md section {name} does not document {missing}"


def test_every_sdk_export_and_error_code_is_documented():
    from kiapi_core import sdk

    text = (DOCS / "sdk.md").read_text()
    assert [n for n in sdk.__all__ if f"`{n}" not in text] == []
    public = {code for code, cls in sdk.error_classes().items() if cls.__module__ == "kiapi_core.errors"}
    assert [c for c in sorted(public - _PRIVATE_CODES) if f"`{c}`" not in text] == []


#: Codes the core answers with itself; plugins never raise them.
_PRIVATE_CODES = {"malformed_json", "unknown_model", "unauthorized", "not_acceptable", "payload_too_large",
                  "unsupported_media_type", "queue_full", "sync_timeout", "insufficient_storage"}


@pytest.mark.parametrize("hook", sorted(_hooks()))
def test_every_hook_has_a_test(hook):
    """A plugin in the tests implements the hook (datasette's habit: no untested hook)."""
    sources = [p.read_text() for p in (ROOT / "tests").rglob("*.py")]
    assert any(f"def {hook}(" in text for text in sources), f"no test plugin implements {hook}"
