"""CPU time and thread switches per request of a ``kiapi serve`` process.

Latency on a shared machine moves several-fold from minute to minute; what a request *costs*
the server moves much less. This starts a demo server with the benchmark's no-op plugin
(``bench/kiapi_bench_noop.py``), sends each probe back to back on one keep-alive connection,
and reads the process's CPU time (``/proc/<pid>/stat``) and every thread's voluntary and
involuntary context switches (``/proc/<pid>/task/*/status``) before and after. Linux only.

    uv run python bench/request_cost.py [--requests 2000] [--probes noop,png,health]

To compare two trees, run it with ``PYTHONPATH=<other tree>`` too (the server inherits it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import hostspeed
from run import Server, install_noop_plugin

PROBES = {
    "noop": ("POST", "/v1/bench/noop/run", b"{}", {"Content-Type": "application/json"}),
    "png": ("POST", "/v1/bench/noop/png", b"{}", {"Content-Type": "application/json", "Accept": "image/png"}),
    "health": ("GET", "/health", b"", {}),
}


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def switches(pid: int) -> int:
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            total += sum(int(line.split()[1]) for line in status.read_text().splitlines()
                         if "ctxt_switches" in line)  # voluntary and involuntary
        except OSError:  # a thread that ended meanwhile
            continue
    return total


def measure(port: int, pid: int, name: str, requests: int) -> str:
    method, path, body, headers = PROBES[name]
    raw = hostspeed.request_bytes(method, path, port, body, headers)
    client = hostspeed.RawClient(port)
    try:
        for _ in range(200):  # warm the path
            client.send(raw)
        cpu0, switches0 = cpu_s(pid), switches(pid)
        took = []
        for _ in range(requests):
            started = time.perf_counter()
            status, answer = client.send(raw)
            took.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"{name} answered {status}: {answer[:200]!r}")
        cpu1, switches1 = cpu_s(pid), switches(pid)
    finally:
        client.close()
    return (f"{name:7} CPU {(cpu1 - cpu0) / requests * 1e3:6.3f} ms/request   "
            f"{(switches1 - switches0) / requests:5.1f} thread switches/request   "
            f"p50 {statistics.median(took) * 1e3:6.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--probes", default="noop,png,health", help=f"comma-separated: {', '.join(PROBES)}")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kiapi-cost-"))
    server = Server(workdir, extra_site=install_noop_plugin(workdir / "site"), name="cost")
    try:
        server.wait_healthy(60.0)
        for name in args.probes.split(","):
            print(measure(server.port, server.pid, name.strip(), args.requests), flush=True)
    finally:
        server.stop()
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
