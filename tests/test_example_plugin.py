"""The example third-party plugin (docs/examples/kiapi-pillow), found the way real installs are.

Installing into the shared environment during tests is not allowed, so the test does what pip
does, minus the copying: it writes a ``.dist-info`` (METADATA with the example's name, version
and ``Requires-Dist``, and its ``kiapi`` entry points, all read from its pyproject.toml) into a
directory on ``sys.path`` next to the example's source folder. ``importlib.metadata`` then finds
it exactly as it finds a wheel-installed plugin.
"""

import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "kiapi-pillow"


def _install(site: Path) -> dict:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    requires = "".join(f"Requires-Dist: {r}\n" for r in project["dependencies"])
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n{requires}")
    entry_points = project["entry-points"]["kiapi"]
    (info / "entry_points.txt").write_text("[kiapi]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    return project


@pytest.fixture
def installed(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    project = _install(site)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(site))
    return project


def test_example_is_outside_the_uv_workspace():
    root = tomllib.loads((EXAMPLE.parents[2] / "pyproject.toml").read_text())
    members = root["tool"]["uv"]["workspace"]["members"]
    assert all(not EXAMPLE.relative_to(EXAMPLE.parents[2]).match(m) for m in members)
    assert "docs/examples/kiapi-pillow/tests" in root["tool"]["pytest"]["ini_options"]["testpaths"]


def test_kiapi_plugins_lists_the_example(installed, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "KIAPI_DATA_DIR": str(tmp_path / "data"), "KIAPI_LOAD_PLUGINS": "kiapi-pillow"}
    done = subprocess.run([sys.executable, "-m", "kiapi_core.cli", "plugins", "--json"], env=env,
                          capture_output=True, text=True, check=True)
    (record,) = json.loads(done.stdout)
    assert record["distribution"] == "kiapi-pillow" and record["version"] == installed["version"]
    assert record["entry_point"] == "pillow = kiapi_pillow" and record["error"] is None
    assert record["capabilities"] == ["pillow"] and record["models"]["pillow"][0] == "lanczos"


async def test_example_serves_openapi_and_resizes_end_to_end(installed, tmp_path):
    from PIL import Image

    from kiapi_core.testing import build_test_host, client

    host = build_test_host(tmp_path / "data", load_entrypoints=True, load_plugins=["kiapi-pillow"])
    assert host.registry.registered()[0].distribution == "kiapi-pillow"
    async with client(host) as http:
        root = (await http.get("/openapi.json")).json()
        (entry,) = [c for c in root["x-kiapi-capabilities"] if c["name"] == "pillow"]
        assert entry["openapi"] == "/v1/image/pillow/openapi.json"
        document = (await http.get(entry["openapi"])).json()
        assert "/v1/image/pillow/resize" in document["paths"] and document["x-kiapi-capability"] == "pillow"

        source = io.BytesIO()
        Image.new("RGB", (120, 80), "blue").save(source, "PNG")
        file_id = await http.upload(source.getvalue(), "photo.png", "image/png")
        response = await http.post("/v1/image/pillow/resize",
                                   json={"image": {"type": "file_id", "file_id": file_id}, "width": 60})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png" and response.headers["x-kiapi-file-id"]
        output = Image.open(io.BytesIO(response.content))
        assert (output.format, output.size) == ("PNG", (60, 40))
