"""A real ``kiapi serve --demo`` subprocess on a free loopback port, and a webhook receiver.

Plugins reach the subprocess as entry points of a fake distribution on PYTHONPATH: the test
plugins in tests/support (``echo``; ``sleepy``, whose job runs until a file appears; ``cwait``,
the cluster tests' plugin), chosen with ``KIAPI_LOAD_PLUGINS``. Used by every test that runs
real server processes (tests/cluster_procs.py builds the cluster's hosts on it).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

SUPPORT = Path(__file__).parent / "support"
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(http: httpx.Client, proc: subprocess.Popen, output: Callable[[], str],
                       timeout_s: float) -> None:
    """Poll ``/health`` until the server answers 200; fail with its log if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if http.get("/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, output()
        assert time.monotonic() < deadline, "server did not start:\n" + output()
        time.sleep(0.1)


#: Entry points of the fake distribution: the test plugins in tests/support (KIAPI_LOAD_PLUGINS picks).
ENTRY_POINTS = {"echo": "kiapi_echo", "sleepy": "kiapi_sleepy", "cwait": "kiapi_clusterwait"}


def plugin_site(tmp: Path) -> Path:
    site = tmp / "site"
    if not site.exists():
        info = site / "kiapi_proc_test-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiapi-proc-test\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(
            "[kiapi]\n" + "".join(f"{name} = {module}\n" for name, module in ENTRY_POINTS.items()))
    return site


def subprocess_env(tmp: Path, data: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site(tmp)), str(SUPPORT), *sys.path]),
            "KIAPI_DATA_DIR": str(data), "KIAPI_LOAD_PLUGINS": "echo,sleepy", "KIAPI_STRICT_PLUGINS": "1",
            "KIAPI_CONFIG": "", "XDG_CONFIG_HOME": str(tmp / "cfg"), **extra}


class Server:
    """``python -m kiapi_core.cli serve --demo`` with ``env`` on top of the test environment;
    waits for ``/health`` unless ``wait=False`` (then call :meth:`ready`)."""

    def __init__(self, tmp: Path, data: Path, *, wait: bool = True, log_name: str | None = None,
                 **env: str) -> None:
        self.data = data
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = subprocess_env(tmp, data, **env)
        self.log_path = tmp / (log_name or f"server-{self.port}.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiapi_core.cli", "serve", "--demo", "--port", str(self.port)],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        token = env.get("KIAPI_AUTH_TOKEN")
        self.http = httpx.Client(base_url=self.url, timeout=TIMEOUT,
                                 headers={"Authorization": f"Bearer {token}"} if token else None)
        if wait:
            self.ready()

    def ready(self) -> Server:
        wait_until_healthy(self.http, self.proc, self.output, TIMEOUT)
        return self

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait_for(self, job_id: str, until: str | Callable[[dict], bool], what: str = "") -> dict:
        """Long-poll the job until its status is ``until`` (or the predicate holds)."""
        done = (lambda job: job["status"] == until) if isinstance(until, str) else until
        deadline = time.monotonic() + TIMEOUT
        job = self.job(job_id)
        while not done(job):
            assert time.monotonic() < deadline, (what, job)
            job = self.http.get(f"/v1/jobs/{job_id}", params={"wait": 2}).json()
        return job

    def stop(self, kill: bool = False) -> int:
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
        try:
            return self.proc.wait(TIMEOUT)
        finally:
            self.http.close()
            self.log.close()


class Receiver:
    """A webhook receiver on 127.0.0.1: records every delivery; answers ``status`` (settable)."""

    def __init__(self) -> None:
        self.deliveries: list[dict] = []
        self.status = 200
        self.changed = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.changed:
                    status = receiver.status
                    receiver.deliveries.append({"headers": {k.lower(): v for k, v in self.headers.items()},
                                                "body": body, "json": json.loads(body), "status": status,
                                                "path": self.path})
                    receiver.changed.notify_all()
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self.deliveries):
                left = deadline - time.monotonic()
                assert left > 0, f"deliveries so far: {[d['json']['type'] for d in self.deliveries]}"
                self.changed.wait(left)
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
