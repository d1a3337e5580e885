"""Cluster figures for bench/run.py: claim-to-start latency and jobs/s, two hosts against one.

A real PostgreSQL server is started for the run (``tests/support/pg_server.py``: initdb in a
temp dir, 127.0.0.1, fsync off), or ``KIAPI_BENCH_PG_URL`` names an existing empty database.
Each host is a ``kiapi serve --demo`` subprocess with the no-op plugin and
``KIAPI_CLUSTER_URL`` set; all of them run on this machine, so with 2 cores two hosts compete
for the same CPUs: the jobs/s ratio shows what the shared queue costs, not what two Macs gain.

* ``cluster_claim_to_start_ms``: median time from a job's submission (on host A) to its start
  on whichever host claimed it, for jobs submitted one at a time into an idle cluster (the
  LISTEN/NOTIFY wake-up plus the SKIP LOCKED claim);
* ``cluster_jobs_per_s_1`` / ``_2``: a batch of ``sleep`` jobs (50 ms on the model thread)
  submitted at once, until the last ends, with one host and with two;
* ``cluster_scaling``: the ratio of the two (2.0 is perfect).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
SLEEP_MS = 50


def _database(workdir: Path, cleanup: list[Callable[[], None]]) -> str | None:
    import os

    if os.environ.get("KIAPI_BENCH_PG_URL"):
        return os.environ["KIAPI_BENCH_PG_URL"]
    sys.path.insert(0, str(HERE.parent / "tests" / "support"))
    from pg_server import PostgresServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        return None
    server = PostgresServer(bin_dir)
    server.start()
    cleanup.append(server.stop)
    return server.url()


def _batch(client: httpx.Client, url: str, count: int, wait_job: Callable[..., dict[str, Any]]) -> float:
    t0 = time.perf_counter()
    ids = []
    for _ in range(count):
        r = client.post(url + "/v1/bench/noop/sleep", json={"ms": SLEEP_MS, "mode": "async"})
        r.raise_for_status()
        ids.append(r.json()["job_id"])
    for job_id in ids:
        wait_job(client, url, job_id, 120)
    return count / (time.perf_counter() - t0)


def measure_cluster(profile: Any, workdir: Path, site: Path, server_class: Any, servers: list[Any],
                    wait_job: Callable[..., dict[str, Any]], results: dict[str, Any], say: Callable[[str], None]) -> None:
    cleanup: list[Callable[[], None]] = []
    try:
        url = _database(workdir, cleanup)
        if url is None:
            say("  skipped: no PostgreSQL server binaries (initdb) on this machine")
            return
        env = {"KIAPI_CLUSTER_URL": url, "KIAPI_MAX_QUEUE": "1024", "KIAPI_CLUSTER_LEASE_S": "10"}
        a = server_class(workdir, extra_site=site, env={**env, "KIAPI_CLUSTER_HOST_ID": "bench-a"}, name="cluster-a")
        servers.append(a)
        a.wait_healthy(60.0)
        count = 10 if profile.quick else 200
        with httpx.Client(timeout=120.0) as client:
            for _ in range(3):
                client.post(a.url + "/v1/bench/noop/run", json={}).raise_for_status()
            waits = []
            for _ in range(count):
                r = client.post(a.url + "/v1/bench/noop/run", json={"mode": "async"})
                r.raise_for_status()
                job = wait_job(client, a.url, r.json()["job_id"], 60)
                waits.append(job["started_at"] - job["created_at"])
            results["cluster_claim_to_start_ms"] = round(statistics.median(waits) * 1000, 2)
            say(f"  submit-to-start on an idle cluster {results['cluster_claim_to_start_ms']:8.2f} ms median "
                f"(p90 {sorted(waits)[int(len(waits) * 0.9) - 1] * 1000:.2f} ms, {count} jobs)")
            batch = 16 if profile.quick else 200
            one = _batch(client, a.url, batch, wait_job)
            b = server_class(workdir, extra_site=site, env={**env, "KIAPI_CLUSTER_HOST_ID": "bench-b"},
                             name="cluster-b")
            servers.append(b)
            b.wait_healthy(60.0)
            two = _batch(client, a.url, batch, wait_job)
        results["cluster_jobs_per_s_1"] = round(one, 1)
        results["cluster_jobs_per_s_2"] = round(two, 1)
        results["cluster_scaling"] = round(two / one, 2)
        say(f"  {SLEEP_MS} ms jobs, one host         {one:8.1f} jobs/s ({batch} jobs)")
        say(f"  {SLEEP_MS} ms jobs, two hosts        {two:8.1f} jobs/s  scaling x{two / one:.2f}")
    finally:
        for server in [s for s in servers if getattr(s, "log_path", Path()).name.startswith("cluster-")]:
            server.stop()
            servers.remove(server)
        for fn in cleanup:
            fn()
