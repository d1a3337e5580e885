#!/usr/bin/env python3
"""kiapi benchmark harness: host overhead, responsiveness, start-up, file streaming.

Run it from a clone, in the project's environment::

    uv run python bench/run.py            # every measurement, about a minute on 2 cores
    uv run python bench/run.py --quick    # tiny counts (seconds), for CI and tests/test_bench.py

It prints a human-readable report, then ONE JSON object on its last line. Everything runs on
the tiny demo models (``kiapi serve --demo``) and loopback addresses only; every server it
starts is a subprocess in its own session, and every loop is bounded in count and in time.
Subprocesses and temp directories are cleaned up however the run ends (error, Ctrl-C,
SIGTERM). What each figure means and the latest results: docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hostspeed
import httpx
import uploadspeed
from cluster import measure_cluster  # bench/cluster.py (the script's directory is on sys.path)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MiB = 1024 * 1024
LOOPBACK = "127.0.0.1"

TARGETS: dict[str, tuple[str, float]] = {
    "host_overhead_ratio": ("<=", 1.05),
    "poll_p99_ms": ("<=", 20.0),
    "startup_s": ("<=", 1.5),
    "cli_help_s": ("<=", 0.5),
    "upload_rss_growth_mib": ("<=", 64.0),
    "upload_vs_copy_ratio": (">=", 0.5),
    "lora_vs_plain_ratio": ("<=", 1.2),
    # Host speed (bench/hostspeed.py), each a ratio of two measurements interleaved in this run.
    "sync_noop_vs_cog_ratio": ("<=", 0.8),
    "noop_throughput_vs_bare_ratio": (">=", 0.5),
    "noop_throughput_32_vs_1": (">=", 0.95),
    "sync_png_vs_bare_ratio": ("<=", 2.0),
    "health_vs_bare_ratio": ("<=", 1.2),
    "raw_upload_vs_copy_ratio": (">=", 0.5),
    "loads_per_job": ("<=", 0.3),
}
SECTIONS = ("cli", "startup", "first", "overhead", "lora", "queue", "events", "peers", "poll", "upload",
            "rawupload", "affinity", "cluster")
REQUIRED_KEYS = ("host_overhead_ratio", "poll_p99_ms", "startup_s", "cli_help_s",
                 "upload_rss_growth_mib", "upload_vs_copy_ratio", "queue_jobs_per_s", "lora_vs_plain_ratio")

#: The generation compared over HTTP and in-process (fixed seed, so both give the same PNG).
GEN = {"prompt": "a red apple on a wooden table", "width": 64, "height": 64, "steps": 2, "seed": 7}


class Profile:
    """Iteration counts and time caps; ``--quick`` shrinks everything."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.cli_runs = 2 if quick else 7
        self.import_runs = 2 if quick else 7
        self.startup_runs = 1 if quick else 5
        self.overhead_pairs = 3 if quick else 40
        self.overhead_warmup = 1 if quick else 3
        self.overhead_cap_s = 20 if quick else 90
        self.lora_pairs = 3 if quick else 20
        self.noop_sync = 10 if quick else 200
        self.queue_jobs = 20 if quick else 500
        self.event_runs = 3 if quick else 30
        self.poll_cap_s = 1.5 if quick else 8.0
        self.poll_count = 150 if quick else 2000
        self.poll_interval_s = 0.005
        # The long CPU-heavy job polled against: a tiny-ERNIE run at a big size, canceled once
        # the poll window is over (256 px is ~0.85 s a step on a 2-core EPYC).
        self.long_job = {"width": 256, "height": 256, "steps": 20 if quick else 100}
        self.upload_mib = 16 if quick else 1024
        self.upload_reps = 1 if quick else 3
        self.budget_s = 60 if quick else 900


# --------------------------------------------------------------------------- utilities


class Deadline(Exception):
    pass


class _Done(Exception):
    """Nothing left to run (``--only`` selected no server measurement)."""


class Clock:
    def __init__(self, budget_s: float) -> None:
        self.start = time.monotonic()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise Deadline(f"the harness's time budget ({self.budget_s:g} s) ran out during {what}")


def say(text: str = "") -> None:
    print(text, flush=True)


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def kiapi_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m``."""
    script = Path(sys.executable).with_name("kiapi")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kiapi_core.cli"]


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def base_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error",
        "KIAPI_LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1",
    })
    for key in [k for k in env if k.startswith("KIAPI_") and k != "KIAPI_LOG_LEVEL"]:
        env.pop(key)  # a developer's own settings must not leak into the measurements
    env.update(extra)
    return env


class Server:
    """A ``kiapi serve`` subprocess on a loopback port, in its own session."""

    def __init__(self, workdir: Path, *, demo: bool = True, extra_site: Path | None = None,
                 env: dict[str, str] | None = None, name: str = "server") -> None:
        self.port = free_port()
        self.data = workdir / f"{name}-data"
        self.log_path = workdir / f"{name}.log"
        self.url = f"http://{LOOPBACK}:{self.port}"
        environment = base_env(KIAPI_DATA_DIR=str(self.data), **(env or {}))
        if extra_site is not None:
            environment["PYTHONPATH"] = os.pathsep.join(
                [str(extra_site), *filter(None, [environment.get("PYTHONPATH")])])
        cmd = [*kiapi_command(), "serve", "--host", LOOPBACK, "--port", str(self.port)]
        if demo:
            cmd.append("--demo")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=environment, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=workdir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_healthy(self, timeout_s: float = 60.0) -> float:
        """Seconds from spawn until ``GET /health`` answered 200."""
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_tail()}")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return time.perf_counter() - self.started
                except httpx.TransportError:
                    pass
                time.sleep(0.005)
        raise RuntimeError(f"the server did not answer /health within {timeout_s:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


def install_noop_plugin(site: Path) -> Path:
    """A fake ``kiapi-bench`` distribution (dist-info + entry point) holding the no-op plugin,
    like ``tests/test_plugins.py::_install_fake_distribution``."""
    site.mkdir(parents=True, exist_ok=True)
    info = site / "kiapi_bench-0.0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kiapi-bench\nVersion: 0.0.0\n")
    (info / "entry_points.txt").write_text("[kiapi]\nnoop = kiapi_bench_noop\n")
    shutil.copy(HERE / "kiapi_bench_noop.py", site / "kiapi_bench_noop.py")
    return site


def swap_servers(workdir: Path, site: Path, servers: list[Server]) -> Callable[[str, dict[str, str]], Server]:
    """Starts servers for the model-swap measurement: a budget (10 GB) that holds one of the
    two 6 GB ``swap`` models."""
    def start(name: str, env: dict[str, str]) -> Server:
        server = Server(workdir, extra_site=site, name=f"swap-{name}",
                        env={"KIAPI_MEMORY_LIMIT_GB": "10", **env})
        servers.append(server)
        server.wait_healthy(60.0)
        return server

    return start


def timed_run(cmd: list[str], env: dict[str, str], timeout_s: float = 60.0) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, timeout=timeout_s, cwd=ROOT)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return took


def wait_job(client: httpx.Client, url: str, job_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"job {job_id} did not finish within {timeout_s:g} s")
        job = client.get(f"{url}/v1/jobs/{job_id}", params={"wait": min(left, 10.0)}).json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job


# --------------------------------------------------------------------------- measurements


def measure_cli(profile: Profile, results: dict[str, Any]) -> None:
    env = base_env()
    cmd = [*kiapi_command(), "--help"]
    timed_run(cmd, env)  # page cache
    runs = [timed_run(cmd, env) for _ in range(profile.cli_runs)]
    results["cli_help_s"] = round(statistics.median(runs), 3)
    baseline = [timed_run([sys.executable, "-c", "pass"], env) for _ in range(profile.import_runs)]
    imports = [timed_run([sys.executable, "-c", "import kiapi_core"], env) for _ in range(profile.import_runs)]
    app = [timed_run([sys.executable, "-c", "import kiapi_core.app, kiapi_ernie, kiapi_seedvr2"], env)
           for _ in range(profile.import_runs)]
    results["python_startup_s"] = round(statistics.median(baseline), 3)
    results["import_kiapi_core_s"] = round(statistics.median(imports), 3)
    results["import_app_and_plugins_s"] = round(statistics.median(app), 3)
    say(f"  kiapi --help                     {results['cli_help_s']:.3f} s  (median of {len(runs)})")
    say(f"  python -c pass                   {results['python_startup_s']:.3f} s")
    say(f"  python -c 'import kiapi_core'    {results['import_kiapi_core_s']:.3f} s")
    say(f"  import app + both plugins        {results['import_app_and_plugins_s']:.3f} s")


def measure_startup(profile: Profile, workdir: Path, clock: Clock, results: dict[str, Any]) -> None:
    runs = []
    capabilities: list[str] = []
    for i in range(profile.startup_runs):
        clock.check("start-up")
        server = Server(workdir, name=f"startup{i}")
        try:
            runs.append(server.wait_healthy(30.0))
            health = httpx.get(server.url + "/health", timeout=5).json()
            capabilities = sorted(_capability_names(health))
        finally:
            server.stop()
            shutil.rmtree(server.data, ignore_errors=True)
    results["startup_s"] = round(statistics.median(runs), 3)
    results["startup_capabilities"] = capabilities
    say(f"  kiapi serve --demo until /health {results['startup_s']:.3f} s  (median of {len(runs)}; "
        f"min {min(runs):.3f}, max {max(runs):.3f}; capabilities: {', '.join(capabilities) or '?'})")


def _capability_names(health: Any) -> list[str]:
    """Capability names from /health, whatever its exact shape."""
    found: list[str] = []
    caps = health.get("capabilities") if isinstance(health, dict) else None
    if isinstance(caps, dict):
        found = list(caps)
    elif isinstance(caps, list):
        for item in caps:
            found.append(item.get("name", "?") if isinstance(item, dict) else str(item))
    return found


def measure_first_request(server: Server, client: httpx.Client, results: dict[str, Any]) -> dict[str, Any]:
    """The first generate on a fresh server: tiny weights written, model loaded, then run."""
    started = time.perf_counter()
    response = client.post(server.url + "/v1/image/ernie/generate", json=GEN, headers={"Accept": "image/png"})
    took = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"generate answered {response.status_code}: {response.text[:500]}")
    job = client.get(f"{server.url}/v1/jobs/{response.headers['X-Kiapi-Job-Id']}").json()
    results["first_request_s"] = round(took, 3)
    say(f"  first generate (writes tiny weights, loads, runs)  {took:.3f} s")
    return job


def measure_overhead(profile: Profile, server: Server, client: httpx.Client, params: dict[str, Any],
                     clock: Clock, results: dict[str, Any]) -> None:
    """Warm sync generate over HTTP vs the same generation in this process, alternating."""
    import mlx.core as mx

    from kiapi_core.images import encode_image
    from kiapi_ernie.runtime import build_model
    from kiapi_ernie.tiny import ensure_tiny_dir
    from kiapi_ernie.variants import VARIANTS

    source = ensure_tiny_dir(server.data / "models" / "ernie")  # the server's own tiny weights
    started = time.perf_counter()
    model = build_model(VARIANTS[params["model"]], quantize=params["quantize"], source=str(source), demo=True)
    results["inprocess_load_s"] = round(time.perf_counter() - started, 3)
    results["mlx"] = {"version": getattr(mx, "__version__", "?"), "device": str(mx.default_device())}

    def direct() -> tuple[float, bytes]:
        t0 = time.perf_counter()
        image = model.generate_image(  # noqa: F821 - deleted below, after the last call
            seed=params["seed"], prompt=params["prompt"], negative_prompt=params.get("negative_prompt"),
            num_inference_steps=params["steps"], width=params["width"], height=params["height"],
            guidance=params["guidance"], scheduler=params["scheduler"]).image
        data = encode_image(image, params["format"], params["quality"])
        return time.perf_counter() - t0, data

    def http() -> tuple[float, bytes]:
        t0 = time.perf_counter()
        response = client.post(server.url + "/v1/image/ernie/generate", json=GEN, headers={"Accept": "image/png"})
        data = response.content
        took = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"generate answered {response.status_code}: {response.text[:500]}")
        return took, data

    for _ in range(profile.overhead_warmup):
        http()
        direct()
    over_http, over_direct = [], []
    same = True
    limit = time.monotonic() + profile.overhead_cap_s
    for i in range(profile.overhead_pairs):
        if over_http and (time.monotonic() > limit or clock.left() < 30):  # at least one pair
            break
        # Alternate which side goes first, so drift and caches favour neither.
        pair = (http, direct) if i % 2 == 0 else (direct, http)
        for side in pair:
            took, data = side()
            (over_http if side is http else over_direct).append(took)
            if side is http:
                http_png = data
            else:
                direct_png = data
        # Pixels, not bytes: the server's PNG also carries the job's params (a `kiapi` chunk).
        same = same and _pixels(http_png) == _pixels(direct_png)
    del model
    med_http, med_direct = statistics.median(over_http), statistics.median(over_direct)
    results["host_overhead_ratio"] = round(med_http / med_direct, 4)
    results["host_overhead_ms"] = round((med_http - med_direct) * 1000, 2)
    results["generate_http_ms"] = round(med_http * 1000, 2)
    results["generate_direct_ms"] = round(med_direct * 1000, 2)
    results["overhead_pairs"] = len(over_http)
    results["outputs_identical"] = same
    say(f"  warm sync generate over HTTP     {med_http * 1000:8.1f} ms  (median of {len(over_http)})")
    say(f"  same generation in-process       {med_direct * 1000:8.1f} ms  (generate_image + PNG encode)")
    say(f"  host overhead                    {results['host_overhead_ms']:8.1f} ms  ratio "
        f"{results['host_overhead_ratio']:.3f}   identical pixels: {same}")


def _pixels(png: bytes) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return image.tobytes()


def measure_lora(profile: Profile, server: Server, client: httpx.Client, clock: Clock,
                 results: dict[str, Any]) -> None:
    """Warm LoRA generate vs warm plain generate (same size, steps, seed), alternating: the
    adapter is applied to the resident model, so a warm LoRA request loads no weights."""
    from kiapi_ernie.tiny import make_tiny_lora

    path = make_tiny_lora(server.data / "bench_lora.safetensors")
    with path.open("rb") as fh:
        uploaded = client.post(server.url + "/v1/files", files={"file": ("bench_lora.safetensors", fh)})
    file_id = uploaded.json()["file_id"]
    lora = {**GEN, "loras": [{"file": {"type": "file_id", "file_id": file_id}, "scale": 1.0}]}

    def run(body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        response = client.post(server.url + "/v1/image/ernie/generate", json=body,
                               headers={"Accept": "application/json"})
        took = time.perf_counter() - t0
        if response.status_code != 200:
            raise RuntimeError(f"generate answered {response.status_code}: {response.text[:500]}")
        return took, response.json()

    _, first = run(lora)  # reads and caches the adapter; later LoRA requests read nothing
    plain_s, lora_s, warm_metrics = [], [], {}
    limit = time.monotonic() + profile.overhead_cap_s
    for i in range(profile.lora_pairs):
        if time.monotonic() > limit or clock.left() < 20:
            break
        for body in ((GEN, lora) if i % 2 == 0 else (lora, GEN)):
            took, job = run(body)
            (lora_s if body is lora else plain_s).append(took)
            if body is lora:
                warm_metrics = job.get("metrics") or {}
    med_plain, med_lora = statistics.median(plain_s), statistics.median(lora_s)
    results["lora_vs_plain_ratio"] = round(med_lora / med_plain, 4)
    results["lora_generate_ms"] = round(med_lora * 1000, 2)
    results["plain_generate_ms"] = round(med_plain * 1000, 2)
    results["lora_warm_load_gb"] = warm_metrics.get("load_gb")
    results["lora_warm_files_read"] = warm_metrics.get("lora_files_read")
    say(f"  warm plain generate              {med_plain * 1000:8.1f} ms  (median of {len(plain_s)})")
    say(f"  warm LoRA generate               {med_lora * 1000:8.1f} ms  ratio {results['lora_vs_plain_ratio']:.3f}")
    say(f"  warm LoRA job loaded {results['lora_warm_load_gb']} GiB of weights, read "
        f"{results['lora_warm_files_read']} adapter file(s) (first LoRA job: "
        f"{(first.get('metrics') or {}).get('lora_files_read')})")


def measure_noop(profile: Profile, server: Server, client: httpx.Client, clock: Clock,
                 results: dict[str, Any]) -> None:
    url = server.url + "/v1/bench/noop/run"
    for _ in range(3):
        client.post(url, json={}).raise_for_status()
    sync = []
    limit = time.monotonic() + (5 if profile.quick else 30)
    for _ in range(profile.noop_sync):
        if time.monotonic() > limit:
            break
        t0 = time.perf_counter()
        client.post(url, json={}).raise_for_status()
        sync.append(time.perf_counter() - t0)
    results["sync_noop_ms"] = round(statistics.median(sync) * 1000, 2)
    results["sync_noop_p99_ms"] = round(pct(sync, 99) * 1000, 2)
    say(f"  sync no-op round trip            {results['sync_noop_ms']:8.2f} ms median, "
        f"p99 {results['sync_noop_p99_ms']:.2f} ms  ({len(sync)} requests)")

    # Throughput: submit async no-ops back to back (the queue holds them all), then wait for
    # the last; jobs/s from the first submit to the last job's end.
    clock.check("queue throughput")
    ids = []
    t0 = time.perf_counter()
    limit = time.monotonic() + (10 if profile.quick else 60)
    for _ in range(profile.queue_jobs):
        if time.monotonic() > limit:
            break
        response = client.post(url, json={"mode": "async"})
        if response.status_code == 503:  # queue full: let it drain a little
            time.sleep(0.01)
            continue
        response.raise_for_status()
        ids.append(response.json()["job_id"])
    submitted = time.perf_counter() - t0
    last = wait_job(client, server.url, ids[-1], 60)
    took = time.perf_counter() - t0
    statuses = [last["status"]]
    results["queue_jobs_per_s"] = round(len(ids) / took, 1)
    results["queue_submit_per_s"] = round(len(ids) / submitted, 1)
    say(f"  no-op jobs through the queue     {results['queue_jobs_per_s']:8.1f} jobs/s  "
        f"({len(ids)} async jobs; submits alone {results['queue_submit_per_s']:.0f}/s; last {statuses[0]})")


def measure_events(profile: Profile, server: Server, client: httpx.Client, results: dict[str, Any]) -> None:
    """How late a waiting client hears that a job ended: SSE and long-poll (``?wait=``).

    The server stamps ``finished_at`` (time.time) when the job ends; client and server share
    the machine's clock, so receive time minus ``finished_at`` is the notification latency.
    """
    sse, longpoll = [], []
    url = server.url + "/v1/bench/noop/sleep"
    limit = time.monotonic() + (5 if profile.quick else 30)
    for i in range(profile.event_runs):
        if time.monotonic() > limit:
            break
        job_id = client.post(url, json={"mode": "async", "ms": 30}).json()["job_id"]
        if i % 2 == 0:
            with client.stream("GET", f"{server.url}/v1/jobs/{job_id}/events", timeout=10) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        job = json.loads(line[5:])
                        if job["status"] in ("succeeded", "failed", "canceled"):
                            sse.append(time.time() - job["finished_at"])
                            break
        else:
            while True:
                job = client.get(f"{server.url}/v1/jobs/{job_id}", params={"wait": 5}).json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    longpoll.append(time.time() - job["finished_at"])
                    break
    results["sse_end_latency_ms"] = round(statistics.median(sse) * 1000, 2) if sse else None
    results["longpoll_end_latency_ms"] = round(statistics.median(longpoll) * 1000, 2) if longpoll else None
    say(f"  job end -> SSE event received    {results['sse_end_latency_ms']} ms median ({len(sse)} jobs)")
    say(f"  job end -> long-poll answered    {results['longpoll_end_latency_ms']} ms median ({len(longpoll)} jobs)")


def poll_loop(client: httpx.Client, url: str, count: int, cap_s: float, interval_s: float,
              while_: Callable[[dict[str, Any]], bool]) -> list[float]:
    latencies: list[float] = []
    limit = time.monotonic() + cap_s
    while len(latencies) < count and time.monotonic() < limit:
        t0 = time.perf_counter()
        response = client.get(url)
        took = time.perf_counter() - t0
        if not while_(response.json()):
            break
        latencies.append(took)
        time.sleep(interval_s)
    return latencies


def measure_poll(profile: Profile, server: Server, client: httpx.Client, results: dict[str, Any]) -> None:
    """``GET /v1/jobs/{id}`` latency while the model thread runs a long generation; the same
    loop against an idle server is the reference."""
    done = client.post(server.url + "/v1/bench/noop/run", json={}).headers["X-Kiapi-Job-Id"]
    idle = poll_loop(client, f"{server.url}/v1/jobs/{done}", min(profile.poll_count, 300),
                     min(profile.poll_cap_s, 3), profile.poll_interval_s, lambda job: True)
    body = {**GEN, **profile.long_job, "mode": "async"}
    submitted = client.post(server.url + "/v1/image/ernie/generate", json=body)
    if submitted.status_code != 202:
        raise RuntimeError(f"generate answered {submitted.status_code}: {submitted.text[:500]}")
    job_id = submitted.json()["job_id"]
    url = f"{server.url}/v1/jobs/{job_id}"
    try:
        deadline = time.monotonic() + 30
        while client.get(url).json()["status"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.01)
        busy = poll_loop(client, url, profile.poll_count, profile.poll_cap_s, profile.poll_interval_s,
                         lambda job: job["status"] == "running")
        progress = client.get(url).json()
    finally:
        client.post(f"{url}/cancel")
        final = wait_job(client, server.url, job_id, 60)
    results["poll_p99_ms"] = round(pct(busy, 99) * 1000, 2)
    results["poll_p50_ms"] = round(pct(busy, 50) * 1000, 2)
    results["poll_max_ms"] = round(max(busy) * 1000, 2)
    results["poll_samples"] = len(busy)
    results["poll_idle_p99_ms"] = round(pct(idle, 99) * 1000, 2)
    results["poll_idle_p50_ms"] = round(pct(idle, 50) * 1000, 2)
    say(f"  GET /v1/jobs/{{id}} during a {body['width']}px {body['steps']}-step generate: "
        f"p50 {results['poll_p50_ms']:.2f} ms, p99 {results['poll_p99_ms']:.2f} ms, "
        f"max {results['poll_max_ms']:.2f} ms ({len(busy)} polls; job reached "
        f"{progress.get('progress_label')} {progress.get('progress', 0):.2f}, then {final['status']})")
    say(f"  same polls, server idle          p50 {results['poll_idle_p50_ms']:.2f} ms, "
        f"p99 {results['poll_idle_p99_ms']:.2f} ms ({len(idle)} polls)")


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[int] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            value = rss_bytes(self.pid)
            if value is not None:
                self.samples.append(value)
            self.halt.wait(self.interval_s)


def multipart_body(size: int, block: bytes, boundary: str) -> tuple[Iterator[bytes], int]:
    """A multipart/form-data body whose ``file`` part is ``size`` bytes, generated lazily."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"bench.bin\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def chunks() -> Iterator[bytes]:
        yield head
        left = size
        while left > 0:
            piece = block if left >= len(block) else block[:left]
            left -= len(piece)
            yield piece
        yield tail

    return chunks(), len(head) + size + len(tail)


def copy_reference(src: Path, dst: Path) -> float:
    """A plain file copy on the same disk, flushed to it like the server's upload is."""
    t0 = time.perf_counter()
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())
    took = time.perf_counter() - t0
    dst.unlink()
    return took


def userspace_copy(src: Path, dst: Path) -> float:
    """The same copy through a 1 MiB user-space buffer (what any server must do), + fsync."""
    t0 = time.perf_counter()
    buf = bytearray(MiB)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])
        os.fsync(fout.fileno())
    took = time.perf_counter() - t0
    dst.unlink()
    return took


def measure_upload(profile: Profile, server: Server, client: httpx.Client, workdir: Path, clock: Clock,
                   results: dict[str, Any]) -> None:
    size = profile.upload_mib * MiB
    block = os.urandom(MiB)
    src = server.data / "bench-copy-src.bin"  # same file system as the server's files/
    with open(src, "wb") as fh:
        for _ in range(profile.upload_mib):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    uploads, copies, ucopies, growths = [], [], [], []
    try:
        for rep in range(profile.upload_reps):
            clock.check("upload")
            copies.append(copy_reference(src, server.data / "bench-copy-dst.bin"))
            ucopies.append(userspace_copy(src, server.data / "bench-copy-dst.bin"))
            boundary = f"kiapibench{rep}{os.getpid()}"
            body, length = multipart_body(size, block, boundary)
            baseline = []
            for _ in range(10):
                baseline.append(rss_bytes(server.pid) or 0)
                time.sleep(0.01)
            sampler = RssSampler(server.pid)
            sampler.start()
            t0 = time.perf_counter()
            try:
                response = client.post(server.url + "/v1/files", content=body, timeout=600,
                                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                                "Content-Length": str(length)})
            finally:
                took = time.perf_counter() - t0
                sampler.halt.set()
                sampler.join()
            if response.status_code != 201:
                raise RuntimeError(f"upload answered {response.status_code}: {response.text[:500]}")
            record = response.json()
            if record.get("size") not in (None, size):
                raise RuntimeError(f"the server stored {record.get('size')} bytes, sent {size}")
            client.delete(f"{server.url}/v1/files/{record['file_id']}")
            uploads.append(took)
            growths.append((max(sampler.samples or [0]) - statistics.median(baseline)) / MiB)
    finally:
        src.unlink(missing_ok=True)
    # Medians: the page cache and the disk's write-back make single copies vary two-fold here.
    up, cp, ucp = statistics.median(uploads), statistics.median(copies), statistics.median(ucopies)
    results["upload_mib"] = profile.upload_mib
    results["upload_s"] = round(up, 3)
    results["copy_s"] = round(cp, 3)
    results["upload_mib_per_s"] = round(profile.upload_mib / up, 1)
    results["copy_mib_per_s"] = round(profile.upload_mib / cp, 1)
    results["upload_vs_copy_ratio"] = round(cp / up, 3)
    results["upload_rss_growth_mib"] = round(max(growths), 1)
    results["userspace_copy_mib_per_s"] = round(profile.upload_mib / ucp, 1)
    results["upload_vs_userspace_copy_ratio"] = round(ucp / up, 3)
    say(f"  upload {profile.upload_mib} MiB (streamed multipart)  {up:.2f} s = "
        f"{results['upload_mib_per_s']:.0f} MiB/s (median of {len(uploads)}, each copy interleaved)")
    say(f"  plain copy + fsync, same disk    {cp:.2f} s = {results['copy_mib_per_s']:.0f} MiB/s   "
        f"ratio {results['upload_vs_copy_ratio']:.2f}")
    say(f"  copy via a 1 MiB buffer + fsync  {ucp:.2f} s = {results['userspace_copy_mib_per_s']:.0f} MiB/s   "
        f"ratio {results['upload_vs_userspace_copy_ratio']:.2f}")
    say(f"  server RSS growth during upload  {results['upload_rss_growth_mib']:.1f} MiB (max over reps)")


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "os": platform.platform(),
                            "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gib"] = round(int(line.split()[1]) / MiB, 1)
    if "cpu" not in info:
        info["cpu"] = platform.processor() or platform.machine()
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("mlx", "mflux", "kiapi-core"):
        with contextlib.suppress(PackageNotFoundError):
            info[dist] = version(dist)
    info["mlx_disable_compile"] = os.environ.get("MLX_DISABLE_COMPILE", "")
    return info


def verdicts(results: dict[str, Any]) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for key, (op, target) in TARGETS.items():
        value = results.get(key)
        if not isinstance(value, (int, float)) or math.isnan(value):
            out[key] = None
        else:
            out[key] = value <= target if op == "<=" else value >= target
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in seconds")
    parser.add_argument("--upload-mib", type=int, default=None, help="upload size (default 1024, quick 16)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    parser.add_argument("--mlx-compile", action="store_true",
                        help="leave mx.compile on (default: MLX_DISABLE_COMPILE=1 on both sides, see docs)")
    parser.add_argument("--peers", action="store_true",
                        help=f"also measure Replicate Cog's server ({hostspeed.COG_REQUIREMENT}, pip-installed "
                        "into a throwaway venv in the work directory)")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    args = parser.parse_args(argv)
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    if only - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(only - set(SECTIONS)))}")
    # The in-process side of the overhead comparison runs mflux here: same quiet settings as
    # the server gets from base_env().
    for key, value in {"HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error"}.items():
        os.environ.setdefault(key, value)
    # mx.compile on the CPU backend JIT-compiles kernels with g++ (seconds per new shape on a
    # cold $TMPDIR/mlx cache) and gains nothing at tiny sizes: off for both sides by default.
    if args.mlx_compile:
        os.environ.pop("MLX_DISABLE_COMPILE", None)
    else:
        os.environ["MLX_DISABLE_COMPILE"] = "1"
    profile = Profile(args.quick)
    if args.upload_mib:
        profile.upload_mib = args.upload_mib
    clock = Clock(profile.budget_s)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    results: dict[str, Any] = {key: None for key in REQUIRED_KEYS}
    errors: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="kiapi-bench-"))
    servers: list[Server] = []
    say(f"kiapi benchmark ({'quick' if args.quick else 'full'}), work dir {workdir}")
    info = machine()
    say(f"machine: {info.get('cpu')}, {info.get('nproc')} CPUs, {info.get('ram_gib')} GiB, {info.get('os')}, "
        f"Python {info.get('python')}, mlx {info.get('mlx')}, mflux {info.get('mflux')}")

    def section(name: str, title: str, fn: Callable[[], None]) -> None:
        if only and name not in only and not (name == "first" and only - {"cli", "startup"}):
            return
        say(f"\n== {title}")
        try:
            clock.check(title)
            fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # report and go on with the next measurement
            errors.append(f"{title}: {type(exc).__name__}: {exc}")
            say(f"  FAILED: {type(exc).__name__}: {exc}")
            if os.environ.get("KIAPI_BENCH_TRACEBACK"):
                traceback.print_exc()

    try:
        section("cli", "command line", lambda: measure_cli(profile, results))
        section("startup", "start-up (ernie + seedvr2, demo)", lambda: measure_startup(profile, workdir, clock, results))
        if only and not only - {"cli", "startup"}:
            raise _Done
        site = install_noop_plugin(workdir / "site")
        server = Server(workdir, extra_site=site, env={"KIAPI_MAX_QUEUE": "1024"}, name="main")
        servers.append(server)
        client = httpx.Client(timeout=120.0)
        state: dict[str, Any] = {}

        def first() -> None:
            took = server.wait_healthy(60.0)
            say(f"  bench server up in {took:.3f} s (pid {server.pid})")
            state["job"] = measure_first_request(server, client, results)

        section("first", "first request", first)
        if "job" in state:
            section("overhead", "host overhead (ernie 64x64, 2 steps)",
                    lambda: measure_overhead(profile, server, client, state["job"]["params"], clock, results))
        if "job" in state:
            section("lora", "LoRA on the resident model (ernie 64x64, 2 steps)",
                    lambda: measure_lora(profile, server, client, clock, results))
        section("queue", "queue (no-op jobs)", lambda: measure_noop(profile, server, client, clock, results))
        section("events", "job events", lambda: measure_events(profile, server, client, results))
        section("peers", "host speed against a bare Starlette+Hypercorn app" + (" and Cog" if args.peers else ""),
                lambda: hostspeed.measure_peers(profile, server.port, workdir, results, peers=args.peers, say=say))
        section("poll", "responsiveness while a model runs", lambda: measure_poll(profile, server, client, results))
        section("upload", "file upload", lambda: measure_upload(profile, server, client, workdir, clock, results))
        section("rawupload", "uploads with curl against a copy and the stack's floor (bench/uploadspeed.py)",
                lambda: uploadspeed.measure_uploads(profile, server, workdir, results, say, hostspeed.Peer,
                                                    free_port))
        section("affinity", "model-aware queue (two models, one-model budget)",
                lambda: hostspeed.measure_affinity(profile, swap_servers(workdir, site, servers), results, say))
        if not args.quick or "cluster" in only:  # a PostgreSQL server and two hosts: ~30 s, not for --quick
            section("cluster", "cluster: two hosts on PostgreSQL (bench/cluster.py)",
                    lambda: measure_cluster(profile, workdir, site, Server, servers, wait_job, results, say))
        client.close()
        rss = rss_bytes(server.pid)
        results["server_rss_end_mib"] = round(rss / MiB, 1) if rss else None
    except _Done:
        pass
    except KeyboardInterrupt as exc:
        errors.append(f"interrupted: {exc}")
        say(f"\ninterrupted: {exc}")
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        if args.keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    met = verdicts(results)
    say("\n== summary")
    for key, (op, target) in TARGETS.items():
        mark = {True: "ok", False: "MISSED", None: "n/a"}[met[key]]
        say(f"  {key:24} {results.get(key)!s:>10}   target {op} {target:g}   {mark}")
    say(f"  {'queue_jobs_per_s':24} {results.get('queue_jobs_per_s')!s:>10}")
    say(f"  total {time.monotonic() - clock.start:.1f} s" + (f"; {len(errors)} error(s)" if errors else ""))
    summary = {**results, "targets": {k: f"{op} {t:g}" for k, (op, t) in TARGETS.items()}, "met": met,
               "mode": "quick" if args.quick else "full", "machine": info, "errors": errors,
               "elapsed_s": round(time.monotonic() - clock.start, 1)}
    print(json.dumps(summary, sort_keys=False, default=str), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
