"""The CLI against a real server subprocess: ps, run (with a progress bar), jobs, files, prune."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers_server import Server, free_port
from PIL import Image

from kiapi_core.cli import cli

TOKEN = "cli-s3cret"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    running = Server(tmp, tmp / "data", KIAPI_AUTH_TOKEN=TOKEN)
    yield running
    running.stop()


def kiapi(server: Server, *args: str, token: str | None = TOKEN, cwd: Path | None = None):
    env = {"KIAPI_URL": server.url, "KIAPI_AUTH_TOKEN": token or "", "KIAPI_CONFIG": ""}
    runner = CliRunner()
    if cwd is None:
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)
    with runner.isolated_filesystem(temp_dir=cwd):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)


def test_run_sends_typed_fields_shows_progress_and_saves_the_output(server, tmp_path):
    out = tmp_path / "out.txt"
    result = kiapi(server, "run", "echo", "render", "--text", "hello", "--repeat", "2", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text() == "hellohello"
    assert "[####" in result.stderr and "100.0%" in result.stderr and result.stdout.strip() == str(out)

    picture = tmp_path / "in.png"
    Image.new("RGB", (4, 4), (9, 9, 9)).save(picture)
    png = tmp_path / "echo.png"
    result = kiapi(server, "run", "echo", "render", "-i", "text=x", "-i", f"image=@{picture}", "-o", str(png), "--json")
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded" and job["inputs"]["image"].startswith("file_")
    with Image.open(io.BytesIO(png.read_bytes())) as image:
        assert json.loads(image.text["kiapi"])["params"]["text"] == "x"


def test_run_explains_bad_fields_and_failures(server):
    result = kiapi(server, "run", "echo", "render", "--colour", "red")
    assert result.exit_code == 2 and "--colour is not a field" in result.output and "--text" in result.output
    result = kiapi(server, "run", "echo", "render", "--text", "x", "--repeat", "many")
    assert result.exit_code == 2 and "'many' is not a integer" in result.output
    result = kiapi(server, "run", "echo", "nothing")
    assert result.exit_code == 1 and "no operation 'nothing'" in result.output and "render" in result.output
    result = kiapi(server, "run", "echo", "fail", "--how", "invalid")
    assert result.exit_code == 1 and "failed: the handler rejected this request on purpose" in result.output
    result = kiapi(server, "run", "echo", "render", "--text", "forbidden")
    assert result.exit_code == 1 and "422" in result.output and "not allowed" in result.output


def test_ps_and_jobs_list_watch_cancel(server, tmp_path):
    release = tmp_path / "release"
    job_id = server.http.post("/v1/text/sleepy/wait", json={"release": str(release), "mode": "async"}).json()["job_id"]
    queued = server.http.post("/v1/text/sleepy/wait", json={"release": str(release), "mode": "async"}).json()["job_id"]
    while server.http.get(f"/v1/jobs/{job_id}").json()["status"] != "running":
        pass
    ps = kiapi(server, "ps")
    assert ps.exit_code == 0, ps.output
    assert "memory:" in ps.output and job_id in ps.output and queued in ps.output and "running" in ps.output
    listed = kiapi(server, "jobs", "list", "--status", "queued")
    assert queued in listed.output and job_id not in listed.output
    cancel = kiapi(server, "jobs", "cancel", queued)
    assert cancel.output.strip() == f"{queued}: canceled"
    release.write_text("go")
    watched = kiapi(server, "jobs", "watch", job_id)
    assert watched.exit_code == 0 and json.loads(watched.stdout)["status"] == "succeeded"
    assert kiapi(server, "jobs", "watch", queued).exit_code == 1  # it was canceled
    assert job_id in kiapi(server, "jobs").output  # `jobs` alone lists


def test_files_usage_list_rm_and_prune(server, tmp_path):
    kiapi(server, "run", "echo", "fail", "--how", "crash")
    upload = server.http.post("/v1/files", files={"file": ("note.txt", b"12345", "text/plain")}).json()["file_id"]
    usage = kiapi(server, "files", "usage", "--json")
    figures = json.loads(usage.stdout)
    assert figures["kinds"]["upload"]["files"] >= 1 and figures["retention"]["output_ttl_s"] == 604800
    assert "KIND" in kiapi(server, "files").output and "retention: outputs and jobs 7 days" in kiapi(server, "files").output
    assert upload in kiapi(server, "files", "list").output
    dry = kiapi(server, "prune", "--status", "failed", "--dry-run", "--json")
    planned = json.loads(dry.stdout)
    assert planned["dry_run"] and planned["jobs_deleted"]
    assert kiapi(server, "prune", "--status", "failed").exit_code == 0
    assert not json.loads(kiapi(server, "prune", "--status", "failed", "--json").stdout)["jobs_deleted"]
    sized = kiapi(server, "prune", "--max-size", "0", "--kind", "upload", "--dry-run")
    assert f"would delete {upload}" in sized.output and "(dry run)" in sized.output
    assert kiapi(server, "prune").exit_code == 2
    removed = kiapi(server, "files", "rm", upload, "file_" + "0" * 32)
    assert f"deleted {upload}" in removed.output and "not found" in removed.output
    assert server.http.get(f"/v1/files/{upload}").status_code == 404


def test_token_and_missing_server_are_explained(server):
    result = kiapi(server, "ps", token=None)
    assert result.exit_code == 1 and "401" in result.output and "KIAPI_AUTH_TOKEN" in result.output
    result = CliRunner().invoke(cli, ["ps", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 1 and "no kiapi server answers" in result.output


def test_prune_and_usage_of_a_stopped_servers_data_dir(server, tmp_path):
    import asyncio

    import kiapi_echo
    from kiapi_core.testing import build_test_host, client

    data = tmp_path / "stopped"

    async def fill() -> tuple[str, str]:
        async with client(build_test_host(data, plugins=[kiapi_echo])) as http:
            ok = await http.post("/v1/text/echo/render", json={"text": "keep"})
            failed = (await http.post("/v1/text/echo/fail", json={"how": "crash", "mode": "async"})).json()["job_id"]
            await http.wait_job(failed)
            return ok.headers["x-kiapi-file-id"], failed

    output, failed = asyncio.run(fill())
    usage = kiapi(server, "files", "usage", "--data-dir", str(data), "--json")
    assert usage.exit_code == 0, usage.output
    assert json.loads(usage.stdout)["kinds"]["output"] == {"files": 1, "bytes": 4}
    pruned = kiapi(server, "prune", "--data-dir", str(data), "--status", "failed", "--json")
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout)["jobs_deleted"] == [failed]
    sized = json.loads(kiapi(server, "prune", "--data-dir", str(data), "--max-size", "0", "--json").stdout)
    assert sized["deleted"] == [output] and sized["remaining_bytes"] == 0
    held = kiapi(server, "prune", "--data-dir", str(server.data), "--older-than", "1d")
    assert held.exit_code == 1 and "run without --data-dir" in held.output


def test_help_names_this_systems_config_path(monkeypatch, tmp_path):
    from kiapi_core.cli import _config_path

    monkeypatch.setattr(sys, "platform", "darwin")
    assert _config_path() == "~/Library/Application Support/kiapi/config.toml"
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert _config_path() == "~/.config/kiapi/config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert _config_path() == str(tmp_path / "kiapi" / "config.toml")
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    shown = " ".join(CliRunner().invoke(cli, ["--help"]).output.split())
    assert "kiapi/config.toml" in shown and "Library" not in shown  # this (Linux) machine's path
