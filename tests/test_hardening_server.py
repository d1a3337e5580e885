"""Issue #15, the cases that need a real ``kiapi serve`` process: a real socket (backlog, slow
bodies, clients that send the whole body before reading), signals (uploads while draining) and
the command line (refusing to bind beyond loopback without a token). Servers bind to loopback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_load import HOLD, SUPPORT, _free_port

TIMEOUT = 60.0


class Server:
    """``kiapi serve --demo`` with the echo and hold test plugins, on a free loopback port."""

    def __init__(self, tmp: Path, **env: str) -> None:
        site = tmp / "site"
        info = site / "kiapi_hardening_test-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiapi-hardening-test\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[kiapi]\necho = kiapi_echo\nhold = kiapi_hold\n")
        (site / "kiapi_hold.py").write_text(HOLD)
        self.tmp, self.data = tmp, tmp / "data"
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(SUPPORT), *sys.path]),
                    "KIAPI_DATA_DIR": str(self.data), "KIAPI_LOAD_PLUGINS": "echo,hold",
                    "KIAPI_STRICT_PLUGINS": "1", "KIAPI_LOG_LEVEL": "warning", "KIAPI_CONFIG": "",
                    "XDG_CONFIG_HOME": str(tmp / "cfg"), **env}
        self.log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiapi_core.cli", "serve", "--demo", "--port", str(self.port)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hardening"), KIAPI_BODY_TIMEOUT_S="1", KIAPI_MAX_BODY_MB="1",
                 KIAPI_MAX_UPLOAD_MB="1")
    try:
        yield srv
    finally:
        srv.stop()
    assert "Traceback" not in srv.output(), srv.output()


def _answer(sock: socket.socket, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pass
    return data


# --- 11. slow bodies -------------------------------------------------------------------------------

MULTIPART_START = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n'


@pytest.mark.parametrize("path,content_type,start,drip", [
    ("/v1/files", "multipart/form-data; boundary=xx", MULTIPART_START, b"a"),
    ("/v1/text/echo/render", "application/json", b'{"text": "a"', b" ")])
def test_11_a_trickling_body_is_cut_off_with_408(server, path, content_type, start, drip):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                     "Content-Length: 100000\r\n\r\n".encode() + start)
        sock.settimeout(0.3)
        answer = b""
        for _ in range(40):  # a byte every 0.3 s: never idle for a whole second, but far too slow
            try:
                sock.sendall(drip)
                answer += sock.recv(65536)
                if answer:
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        answer += _answer(sock, 2)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"KIAPI_BODY_TIMEOUT_S" in answer
    assert time.monotonic() - started < 8
    assert os.listdir(server.data / "files" / ".partial") == []


# --- 12. the listen backlog ------------------------------------------------------------------------

def test_12_the_listen_backlog_is_the_intended_one(server):
    from kiapi_core.serve import BACKLOG

    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server.port}"], capture_output=True, text=True,
                         check=True).stdout.split()
    assert int(out[2]) == min(BACKLOG, somaxconn), out  # Send-Q of a listening socket: its backlog


# --- 14. a 413 reaches clients that send everything first -------------------------------------------

def test_14_urllib_sees_413_not_a_broken_pipe(server):
    body = b'{"text": "' + b"x" * (16 * 1024 * 1024) + b'"}'
    request = urllib.request.Request(f"{server.url}/v1/text/echo/render", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413 and b"KIAPI_MAX_BODY_MB" in caught.value.read()
    boundary = "kiapiboundary"
    upload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
              f"Content-Type: application/octet-stream\r\n\r\n").encode() + os.urandom(8 * 1024 * 1024) \
        + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{server.url}/v1/files", data=upload,
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 413 and b"KIAPI_MAX_UPLOAD_MB" in caught.value.read()


# --- 9. no silent exposure ---------------------------------------------------------------------------

def _serve_exit(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "KIAPI_DATA_DIR": str(tmp_path / "data"), "KIAPI_CONFIG": "",
                   "KIAPI_LOAD_PLUGINS": "", "XDG_CONFIG_HOME": str(tmp_path / "cfg"), **env}
    environment.pop("KIAPI_AUTH_TOKEN", None) if "KIAPI_AUTH_TOKEN" not in env else None
    return subprocess.run([sys.executable, "-m", "kiapi_core.cli", "serve", "--port", str(_free_port()), *args],
                          env=environment, capture_output=True, text=True, timeout=TIMEOUT)


def test_9_binding_beyond_loopback_needs_a_token(tmp_path):
    done = _serve_exit(tmp_path, "--host", "0.0.0.0")
    assert done.returncode != 0 and "without KIAPI_AUTH_TOKEN" in done.stderr, done.stderr
    assert "--insecure-no-auth" in done.stderr
    for blank in (" ", "\t  "):
        done = _serve_exit(tmp_path, KIAPI_AUTH_TOKEN=blank)
        assert done.returncode != 0 and "KIAPI_AUTH_TOKEN" in done.stderr and "blank" in done.stderr, done.stderr


def test_9_the_exposure_check_itself():
    from kiapi_core.serve import check_exposure

    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, 0, token=None, insecure_no_auth=False)
    check_exposure("0.0.0.0", 0, token="s3cret", insecure_no_auth=False)
    check_exposure("0.0.0.0", 0, token=None, insecure_no_auth=True)
    with pytest.raises(SystemExit, match="without KIAPI_AUTH_TOKEN"):
        check_exposure("0.0.0.0", 0, token=None, insecure_no_auth=False)


# --- 15. no uploads while draining ------------------------------------------------------------------

def test_15_uploads_are_refused_while_draining(tmp_path):
    srv = Server(tmp_path, KIAPI_SHUTDOWN_GRACE_S="20")
    try:
        release = tmp_path / "release"
        r = httpx.post(f"{srv.url}/v1/text/hold/wait", json={"release": str(release), "mode": "async"})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + TIMEOUT
        while httpx.get(f"{srv.url}/v1/jobs/{job_id}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TIMEOUT
        while True:  # the job manager stops accepting right after the signal
            r = httpx.post(f"{srv.url}/v1/files", files={"file": ("a.txt", b"late", "text/plain")})
            if r.status_code == 503:
                break
            assert r.status_code == 201 and time.monotonic() < deadline, r.text
            time.sleep(0.05)
        assert r.json()["code"] == "shutting_down" and "uploads" in r.json()["detail"]
        release.write_text("go")
        assert srv.proc.wait(TIMEOUT) == 0
    finally:
        srv.stop()
