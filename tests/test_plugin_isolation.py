"""Isolation that always holds: nine misbehaving plugins installed together next to kiapi-ernie
and kiapi-seedvr2 leave the host serving both, with every problem named per plugin in
``kiapi plugins`` (exit 0), ``/health`` (``degraded``) and the log; strict mode turns each
into a start-up error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import httpx
import misbehaving
import msgspec
import pytest

from kiapi_core import Capability, Model, Operation, hookimpl
from kiapi_core.errors import PluginError
from kiapi_core.testing import build_test_host

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("site")
    misbehaving.install(path)
    return path


def _env(site: Path, tmp: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path]), "KIAPI_DATA_DIR": str(tmp / "data"),
            "KIAPI_CONFIG": "", "XDG_CONFIG_HOME": str(tmp / "cfg"), "KIAPI_STRICT_PLUGINS": "0", **extra}


def _cli(site: Path, tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiapi_core.cli", *args], capture_output=True, text=True,
                          env=_env(site, tmp, **env), timeout=TIMEOUT_S)


def _assert_problems_named(by_dist: dict[str, str | None]) -> None:
    for dist, phrases in misbehaving.PROBLEMS.items():
        error = by_dist[dist]
        assert error, f"{dist} was not reported"
        for phrase in phrases:
            assert phrase in error, f"{dist}: {phrase!r} not in {error!r}"
    for dist in ("kiapi-ernie", "kiapi-seedvr2", "kiapi-twin-a"):
        assert by_dist[dist] is None, by_dist[dist]


def test_kiapi_plugins_names_every_problem_and_exits_0(site, tmp_path):
    # Strict mode asked for: `kiapi plugins` still lists everything (it is the diagnosis).
    result = _cli(site, tmp_path, "plugins", "--json", KIAPI_STRICT_PLUGINS="1")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    _assert_problems_named({r["distribution"]: r["error"] for r in records})
    by_dist = {r["distribution"]: r for r in records}
    assert by_dist["kiapi-ernie"]["capabilities"] == ["ernie"]
    assert by_dist["kiapi-seedvr2"]["capabilities"] == ["seedvr2"]
    assert by_dist["kiapi-twin-a"]["capabilities"] == ["twin"]
    assert all(by_dist[d]["capabilities"] == [] for d in misbehaving.PROBLEMS)
    text = _cli(site, tmp_path, "plugins")
    assert text.returncode == 0 and "error: registers capability 'ernie'" in text.stdout
    # The other commands work too, and a plugin's command cannot replace a core one.
    models = _cli(site, tmp_path, "models")
    assert models.returncode == 0 and "ernie:" in models.stdout and "twin:m" in models.stdout
    assert "hello from twin" in _cli(site, tmp_path, "twin-hello").stdout
    assert "Run the HTTP server" in _cli(site, tmp_path, "serve", "--help").stdout


@pytest.mark.parametrize("dist", sorted(misbehaving.PROBLEMS))
def test_each_problem_is_a_start_up_error_in_strict_mode(dist, site, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(site))
    wanted = [dist, "kiapi-ernie", "kiapi-twin-a"]
    with pytest.raises(PluginError) as info:
        build_test_host(tmp_path, load_entrypoints=True, load_plugins=wanted)
    assert dist in str(info.value) and misbehaving.PROBLEMS[dist][0] in str(info.value)
    host = build_test_host(tmp_path, load_entrypoints=True, load_plugins=wanted, strict_plugins=False)
    assert {c.name for c in host.registry} == {"ernie", "twin"}


def test_serve_demo_keeps_serving_ernie_and_seedvr2(site, tmp_path):
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kiapi_core.cli", "serve", "--demo", "--port", str(port)],
                                env=_env(site, tmp_path), stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT_S) as http:
            health = _wait_healthy(http, proc, log)
            assert health["status"] == "degraded"
            _assert_problems_named({**{p["distribution"]: p["error"] for p in health["plugins"]}})
            assert {e["distribution"] for e in health["plugin_errors"]} == set(misbehaving.PROBLEMS)
            assert {c["name"] for c in health["capabilities"]} == {"ernie", "seedvr2", "twin"}
            for family in ("ernie", "seedvr2"):
                models = http.get(f"/v1/image/{family}/models")
                assert models.status_code == 200 and models.json(), models.text
            stolen = http.get("/v1/files/file_" + "0" * 32)
            assert stolen.status_code == 404 and stolen.json()["code"] == "file_not_found"
            # The well-behaved twin's extra route is served and documented with its capability.
            assert http.get("/v1/text/twin/status").text == "twin ok"
            doc = http.get("/v1/text/twin/openapi.json").json()
            assert doc["paths"]["/v1/text/twin/status"]["get"]["summary"].startswith("Twin status")
            ran = http.post("/v1/text/twin/go", json={"text": "hi"})
            assert ran.status_code == 200 and ran.json()["result"] == {"text": "hi"}, ran.text
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)
    output = log.read_text()
    for dist in misbehaving.PROBLEMS:  # each problem is in the log, named by its distribution
        assert f"({dist} 1.0)" in output, dist


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(http: httpx.Client, proc: subprocess.Popen, log: Path) -> dict:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            r = http.get("/health")
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "server did not start:\n" + log.read_text()
        time.sleep(0.1)


class _LiarResult(msgspec.Struct, kw_only=True):
    file_id: str
    count: int


class _LiarRequest(msgspec.Struct, kw_only=True):
    give: Literal["good", "wrong", "nothing"] = "good"
    model: str | None = None
    mode: Literal["sync", "async"] = "sync"


def _liar(job):
    return {"good": _LiarResult(file_id="f", count=1), "wrong": {"file_id": 3}, "nothing": None}[job.request.give]


class _Liar:
    @hookimpl
    def register_capabilities(self, register):
        register(Capability(name="liar", domain="text", title="Liar", models=(Model(name="m", default=True),),
                            operations=(Operation(name="go", request=_LiarRequest, result=_LiarResult,
                                                  handler=_liar, job_type="liar"),)))


async def test_a_result_not_matching_its_struct_fails_the_job(kiapi_client_factory):
    async with kiapi_client_factory(plugins=[_Liar()]) as http:
        good = await http.post("/v1/text/liar/go", json={"give": "good"})
        assert good.status_code == 200 and good.json()["result"] == {"file_id": "f", "count": 1}
        for give, phrase in (("wrong", "does not match its declared _LiarResult"), ("nothing", "returned nothing")):
            bad = await http.post("/v1/text/liar/go", json={"give": give})
            assert bad.status_code == 500 and bad.json()["code"] == "invalid_result", bad.text
            assert phrase in bad.json()["detail"] and "bug in the plugin" in bad.json()["detail"]
            job = (await http.get(f"/v1/jobs/{bad.json()['job_id']}")).json()
            assert job["status"] == "failed" and job["result"] is None
