"""Real ``kiapi serve --demo`` processes sharing one PostgreSQL database (loopback only), built
on :class:`helpers_server.Server` like every other server-process test."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from helpers_server import TIMEOUT, Server

__all__ = ["TIMEOUT", "ClusterHost", "start_hosts"]


class ClusterHost(Server):
    """One host process; ``name`` is its cluster host id. Started without waiting: call
    :meth:`ready` (``start_hosts`` starts them all, then waits)."""

    def __init__(self, tmp: Path, db_url: str, name: str, *, lease_s: float = 2.0, affinity_s: float = 0.0,
                 role: str = "all", grace_s: float = 1.0, extra_env: dict[str, str] | None = None) -> None:
        self.name = name
        env = {"KIAPI_LOAD_PLUGINS": "echo,cwait", "KIAPI_CLUSTER_URL": db_url, "KIAPI_CLUSTER_HOST_ID": name,
               "KIAPI_CLUSTER_LEASE_S": str(lease_s), "KIAPI_AFFINITY_WAIT_S": str(affinity_s), "KIAPI_ROLE": role,
               "KIAPI_SHUTDOWN_GRACE_S": str(grace_s), **(extra_env or {})}
        super().__init__(tmp, tmp / f"data-{name}", wait=False, log_name=f"host-{name}.log", **env)

    def submit(self, release: str = "", **extra) -> str:
        deadline = time.monotonic() + 5.0
        while True:  # a host sees the others (and their budgets) within a second of their start
            r = self.http.post("/v1/text/cwait/wait", json={"release": release, "mode": "async", **extra})
            if (r.status_code != 503 or r.json().get("code") not in ("no_host", "memory_budget")
                    or time.monotonic() > deadline):
                break
            time.sleep(0.2)
        assert r.status_code == 202, r.text
        return r.json()["job_id"]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, kill: bool = False) -> int:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot exit
            except ProcessLookupError:
                pass
        try:
            return super().stop(kill=kill)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(15)


def start_hosts(tmp: Path, db_url: str, names: list[str], **kwargs) -> list[ClusterHost]:
    hosts = [ClusterHost(tmp, db_url, name, **kwargs) for name in names]
    for host in hosts:
        host.ready()
    return hosts
