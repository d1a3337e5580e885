"""Real ``kiapi serve --demo`` processes sharing one PostgreSQL database (loopback only)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

SUPPORT = Path(__file__).parent / "support"
TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def site_dir(tmp: Path) -> Path:
    site = tmp / "site"
    if not site.exists():
        info = site / "kiapi_cluster_test-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiapi-cluster-test\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text("[kiapi]\necho = kiapi_echo\ncwait = kiapi_clusterwait\n")
    return site


class ClusterHost:
    """One host process; ``name`` is its cluster host id."""

    def __init__(self, tmp: Path, db_url: str, name: str, *, lease_s: float = 2.0, affinity_s: float = 0.0,
                 role: str = "all", grace_s: float = 1.0, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site_dir(tmp)), str(SUPPORT), *sys.path]),
               "KIAPI_DATA_DIR": str(tmp / f"data-{name}"), "KIAPI_LOAD_PLUGINS": "echo,cwait",
               "KIAPI_STRICT_PLUGINS": "1", "KIAPI_CONFIG": "", "XDG_CONFIG_HOME": str(tmp / "cfg"),
               "KIAPI_CLUSTER_URL": db_url, "KIAPI_CLUSTER_HOST_ID": name, "KIAPI_CLUSTER_LEASE_S": str(lease_s),
               "KIAPI_AFFINITY_WAIT_S": str(affinity_s), "KIAPI_ROLE": role,
               "KIAPI_SHUTDOWN_GRACE_S": str(grace_s), **(extra_env or {})}
        self.log = open(tmp / f"host-{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiapi_core.cli", "serve", "--demo", "--port", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=self.url, timeout=TIMEOUT)

    def ready(self) -> ClusterHost:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "host did not start:\n" + self.output()
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait_for(self, job_id: str, predicate, what: str = "") -> dict:
        deadline = time.monotonic() + TIMEOUT
        job = self.job(job_id)
        while not predicate(job):
            assert time.monotonic() < deadline, (what, job)
            job = self.http.get(f"/v1/jobs/{job_id}", params={"wait": 2}).json()
        return job

    def submit(self, release: str = "", **extra) -> str:
        deadline = time.monotonic() + 5.0
        while True:  # a host that just started sees the others' heartbeats within a second
            r = self.http.post("/v1/text/cwait/wait", json={"release": release, "mode": "async", **extra})
            if r.status_code != 503 or r.json().get("code") != "no_host" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 202, r.text
        return r.json()["job_id"]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        self.http.close()
        self.log.close()


def start_hosts(tmp: Path, db_url: str, names: list[str], **kwargs) -> list[ClusterHost]:
    hosts = [ClusterHost(tmp, db_url, name, **kwargs) for name in names]
    for host in hosts:
        host.ready()
    return hosts
