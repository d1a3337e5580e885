"""Host-speed figures: kiapi against the floor of its own stack, against Cog, and its queue.

``bench/run.py`` calls two sections from here (uploads: ``bench/uploadspeed.py``):

- :func:`measure_peers`: the same no-op, PNG and health requests sent, interleaved, to kiapi,
  to a bare Starlette+Hypercorn app (``bench/bare_app.py``) and, with ``--peers``, to Replicate
  Cog's server (installed with pip from PyPI into a throwaway venv under the temp directory);
  then throughput with 1, 8 and 32 concurrent keep-alive clients against kiapi and the bare app;
- :func:`measure_affinity`: 20 jobs alternating between two models under a budget that holds
  one, on two servers (model-aware queue on, and strict FIFO), interleaved: loads per job.

The clients here speak HTTP/1.1 over plain sockets, so the client's own cost per request is
a few tens of microseconds and does not hide the servers' differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
LOOPBACK = "127.0.0.1"
#: The Cog release compared against (its server ships inside the wheel since 0.17).
COG_REQUIREMENT = "cog==0.23.1"
CLIENT_COUNTS = (1, 8, 32)

COG_PREDICTOR = '''from cog import BasePredictor


class Predictor(BasePredictor):
    def setup(self) -> None:
        pass

    def predict(self) -> str:
        return "ok"
'''


# --------------------------------------------------------------------------- HTTP clients


def request_bytes(method: str, path: str, port: int, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {LOOPBACK}:{port}"]
    for key, value in (headers or {}).items():
        lines.append(f"{key}: {value}")
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _body_length(head: bytes) -> int | None:
    """Content-Length of a response head; ``None`` for a chunked body."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            return int(value)
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return None
    return 0


class RawClient:
    """One keep-alive connection; :meth:`send` returns (status, body). Hypercorn closes a
    connection after 1000 requests (``keep_alive_max_requests``): then it reconnects."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection((LOOPBACK, self.port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def send(self, raw: bytes) -> tuple[int, bytes]:
        try:
            return self._send(raw)
        except ConnectionError:
            self.close()
            self._connect()
            return self._send(raw)

    def _send(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.reader.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            head += line
        status = int(head.split(b" ", 2)[1])
        length = _body_length(head)
        if length is not None:
            return status, self.reader.read(length)
        body = b""
        while size := int(self.reader.readline().strip(), 16):
            body += self.reader.read(size)
            self.reader.readline()
        self.reader.readline()
        return status, body

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


async def _client_loop(port: int, raw: bytes, stop_at: float, counts: list[int]) -> None:
    while time.monotonic() < stop_at:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while time.monotonic() < stop_at:
                writer.write(raw)
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # closed after its 1000th request: reconnect
                length = _body_length(head)
                if length is None:
                    raise RuntimeError("chunked answers are not expected here")
                await reader.readexactly(length)
                if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.1 201")):
                    raise RuntimeError(f"answered {head[:40]!r}")
                counts[0] += 1
        finally:
            writer.close()


def throughput(port: int, raw: bytes, clients: int, duration_s: float) -> float:
    """Requests per second with ``clients`` keep-alive connections, each one request at a time."""
    async def run() -> float:
        counts = [0]
        started = time.monotonic()
        await asyncio.gather(*(_client_loop(port, raw, started + duration_s, counts) for _ in range(clients)))
        return counts[0] / (time.monotonic() - started)

    return asyncio.run(run())


# --------------------------------------------------------------------------- peer servers


class Peer:
    """A subprocess server on a loopback port, in its own session; stopped with SIGTERM."""

    def __init__(self, name: str, cmd: list[str], port: int, workdir: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.port = name, port
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=workdir)

    def wait_ready(self, path: str, ready: bytes = b"", timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-1500:]}")
            with contextlib.suppress(OSError):
                client = RawClient(self.port)
                try:
                    status, body = client.send(request_bytes("GET", path, self.port))
                finally:
                    client.close()
                if status == 200 and ready in body:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} was not ready within {timeout_s:g} s")

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


def install_cog(root: Path) -> Path:
    """A throwaway venv with Cog from PyPI (pip); returns its python."""
    env_dir = root / "cog-venv"
    python = env_dir / "bin" / "python"
    if not python.exists():
        venv.create(env_dir, with_pip=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", COG_REQUIREMENT],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"pip install {COG_REQUIREMENT} failed: {done.stdout.decode()[-800:]}")
    return python


def start_cog(python: Path, workdir: Path, port: int) -> Peer:
    app = workdir / "cog-app"
    app.mkdir(exist_ok=True)
    (app / "predict.py").write_text(COG_PREDICTOR)
    # The server spawns its worker as `python`: the venv's bin must come first on PATH.
    env = {"PORT": str(port), "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
           "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    peer = Peer("cog", [str(python), "-m", "cog.server.http", "--host", LOOPBACK], port, app, env=env)
    peer.wait_ready("/health-check", ready=b'"READY"')
    return peer


# --------------------------------------------------------------------------- measurements


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _probes(kiapi: int, bare: int, cog: int | None) -> dict[str, tuple[int, bytes]]:
    json_headers = {"Content-Type": "application/json"}
    probes = {
        "kiapi_noop": (kiapi, request_bytes("POST", "/v1/bench/noop/run", kiapi, b"{}", json_headers)),
        "bare_noop": (bare, request_bytes("POST", "/noop", bare, b"{}", json_headers)),
        "kiapi_png": (kiapi, request_bytes("POST", "/v1/bench/noop/png", kiapi, b"{}",
                                           {**json_headers, "Accept": "image/png"})),
        "bare_png": (bare, request_bytes("POST", "/png", bare, b"{}", json_headers)),
        "kiapi_health": (kiapi, request_bytes("GET", "/health", kiapi)),
        "bare_health": (bare, request_bytes("GET", "/health", bare)),
    }
    if cog is not None:
        probes["cog_noop"] = (cog, request_bytes("POST", "/predictions", cog, b'{"input": {}}', json_headers))
    return probes


def _latencies(probes: dict[str, tuple[int, bytes]], rounds: int, cap_s: float,
               busy: dict[str, int]) -> dict[str, list[float]]:
    """Every probe once per round, in an order that rotates each round; one connection each.

    Cog has no queue: it answers 409 while its one slot is still being released after the
    previous answer. Such a refusal is retried at once and counted in ``busy``; the time of
    the answered attempt is the one recorded."""
    clients = {name: RawClient(port) for name, (port, _raw) in probes.items()}
    times: dict[str, list[float]] = {name: [] for name in probes}
    names = list(probes)
    try:
        for name in names:  # warm each connection and path
            for _ in range(3):
                _answered(clients[name], probes[name][1], name, busy)
        limit = time.monotonic() + cap_s
        for i in range(rounds):
            if time.monotonic() > limit:
                break
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(_answered(clients[name], probes[name][1], name, busy))
    finally:
        for client in clients.values():
            client.close()
    return times


def _answered(client: RawClient, raw: bytes, name: str, busy: dict[str, int]) -> float:
    for _ in range(1000):
        t0 = time.perf_counter()
        status, body = client.send(raw)
        took = time.perf_counter() - t0
        if status == 200:
            return took
        if status != 409:
            break
        busy[name] = busy.get(name, 0) + 1
        time.sleep(0.0005)
    raise RuntimeError(f"{name} answered {status}: {body[:300]!r}")


def measure_peers(profile: Any, kiapi_port: int, workdir: Path, results: dict[str, Any], *,
                  peers: bool, say: Any) -> None:
    probe = RawClient(kiapi_port)
    try:
        status, png = probe.send(request_bytes("POST", "/v1/bench/noop/png", kiapi_port, b"{}",
                                               {"Content-Type": "application/json", "Accept": "image/png"}))
        _status, health = probe.send(request_bytes("GET", "/health", kiapi_port))
    finally:
        probe.close()
    if status != 200 or not png.startswith(b"\x89PNG"):
        raise RuntimeError(f"the no-op PNG answered {status}")
    (workdir / "bare.png").write_bytes(png)
    (workdir / "bare-health.json").write_bytes(health)
    started: list[Peer] = []
    try:
        bare_port = _free_port()
        bare = Peer("bare", [sys.executable, str(HERE / "bare_app.py"), "--port", str(bare_port), "--png",
                             str(workdir / "bare.png"), "--health", str(workdir / "bare-health.json")],
                    bare_port, workdir)
        started.append(bare)
        bare.wait_ready("/health")
        cog_port = _start_cog_if_asked(peers, workdir, started, results, say)
        rounds, cap = (30, 10.0) if profile.quick else (400, 90.0)
        busy: dict[str, int] = {}
        times = _latencies(_probes(kiapi_port, bare_port, cog_port), rounds, cap, busy)
        if busy:
            results["busy_refusals"] = busy
        p50 = {name: statistics.median(values) for name, values in times.items()}
        _report_latencies(p50, len(times["kiapi_noop"]), results, say)
        _measure_throughput(profile, kiapi_port, bare_port, results, say)
    finally:
        for peer in started:
            peer.stop()


def _start_cog_if_asked(peers: bool, workdir: Path, started: list[Peer], results: dict[str, Any],
                        say: Any) -> int | None:
    if not peers:
        results["cog_note"] = "not measured: run bench/run.py with --peers to install Cog into a temp venv"
        return None
    try:
        say(f"  installing {COG_REQUIREMENT} into a throwaway venv (pip, PyPI) ...")
        python = install_cog(workdir / "peers")
        port = _free_port()
        started.append(start_cog(python, workdir, port))
        results["cog_version"] = COG_REQUIREMENT.split("==")[1]
        return port
    except Exception as exc:  # the peer is optional: the figure says why it is missing
        results["cog_note"] = f"Cog unavailable: {type(exc).__name__}: {str(exc)[:300]}"
        say(f"  {results['cog_note']}")
        return None


def _report_latencies(p50: dict[str, float], rounds: int, results: dict[str, Any], say: Any) -> None:
    for name, value in p50.items():
        results[f"{name}_p50_ms"] = round(value * 1000, 3)
    results["sync_png_vs_bare_ratio"] = round(p50["kiapi_png"] / p50["bare_png"], 3)
    results["health_vs_bare_ratio"] = round(p50["kiapi_health"] / p50["bare_health"], 3)
    results["sync_noop_vs_bare_ratio"] = round(p50["kiapi_noop"] / p50["bare_noop"], 3)
    if "cog_noop" in p50:
        results["sync_noop_vs_cog_ratio"] = round(p50["kiapi_noop"] / p50["cog_noop"], 3)
    say(f"  p50 over {rounds} interleaved rounds (ms):")
    for what in ("noop", "png", "health"):
        line = f"    {what:7} kiapi {p50[f'kiapi_{what}'] * 1000:7.3f}   bare {p50[f'bare_{what}'] * 1000:7.3f}"
        if what == "noop" and "cog_noop" in p50:
            line += f"   cog {p50['cog_noop'] * 1000:7.3f}"
        say(line)
    say(f"  sync no-op ÷ Cog {results.get('sync_noop_vs_cog_ratio', results.get('cog_note'))};  "
        f"sync PNG ÷ bare {results['sync_png_vs_bare_ratio']};  /health ÷ bare {results['health_vs_bare_ratio']}")


def _measure_throughput(profile: Any, kiapi_port: int, bare_port: int, results: dict[str, Any], say: Any) -> None:
    """Interleaved: for each client count, kiapi and bare alternate (twice in a full run)."""
    duration = 0.4 if profile.quick else 2.0
    reps = 1 if profile.quick else 2
    kiapi_raw = request_bytes("POST", "/v1/bench/noop/run", kiapi_port, b"{}", {"Content-Type": "application/json"})
    bare_raw = request_bytes("POST", "/noop", bare_port, b"{}", {"Content-Type": "application/json"})
    rates: dict[str, dict[int, list[float]]] = {"kiapi": {}, "bare": {}}
    for clients in CLIENT_COUNTS:
        for rep in range(reps):
            order = [("kiapi", kiapi_port, kiapi_raw), ("bare", bare_port, bare_raw)]
            for name, port, raw in order if rep % 2 == 0 else order[::-1]:
                rates[name].setdefault(clients, []).append(throughput(port, raw, clients, duration))
    best = {name: {c: statistics.median(v) for c, v in per.items()} for name, per in rates.items()}
    for name in ("kiapi", "bare"):
        for clients in CLIENT_COUNTS:
            results[f"{name}_noop_rps_{clients}"] = round(best[name][clients], 1)
    results["noop_throughput_vs_bare_ratio"] = round(best["kiapi"][8] / best["bare"][8], 3)
    results["noop_throughput_32_vs_1"] = round(best["kiapi"][32] / best["kiapi"][1], 3)
    for clients in CLIENT_COUNTS:
        say(f"  sync no-op throughput, {clients:2} clients: kiapi {best['kiapi'][clients]:7.0f}/s   "
            f"bare {best['bare'][clients]:7.0f}/s   ratio {best['kiapi'][clients] / best['bare'][clients]:.2f}")


def measure_affinity(profile: Any, start_server: Any, results: dict[str, Any], say: Any) -> None:
    """Loads per job for 20 jobs alternating two models under a one-model budget."""
    jobs, bound, load_s = 20, 4, 0.05 if profile.quick else 0.2
    swap = {"KIAPI_BENCH_SWAP_LOAD_S": str(load_s)}
    servers = {"affinity": start_server("affinity", {**swap, "KIAPI_QUEUE_MAX_BYPASS": str(bound)}),
               "fifo": start_server("fifo", {**swap, "KIAPI_QUEUE_MODEL_AFFINITY": "0"})}
    runs: dict[str, list[dict[str, Any]]] = {"affinity": [], "fifo": []}
    for rep in range(1 if profile.quick else 2):
        for name in (("affinity", "fifo") if rep % 2 == 0 else ("fifo", "affinity")):
            runs[name].append(_alternating_run(servers[name], jobs))
    for name, found in runs.items():
        results[f"{name}_loads_per_job" if name == "fifo" else "loads_per_job"] = round(
            statistics.median(r["loads"] for r in found) / jobs, 3)
    results["affinity_max_overtaken"] = max(r["max_overtaken"] for r in runs["affinity"])
    results["affinity_fairness_bound"] = bound
    results["affinity_wall_vs_fifo_ratio"] = round(
        statistics.median(r["wall_s"] for r in runs["affinity"]) / statistics.median(r["wall_s"] for r in runs["fifo"]), 3)
    say(f"  {jobs} jobs alternating two models, budget for one (load {load_s:g} s, job 10 ms):")
    say(f"    model-aware queue: {results['loads_per_job']} loads/job, no job overtaken more than "
        f"{results['affinity_max_overtaken']} times (bound {bound})")
    say(f"    strict FIFO:       {results['fifo_loads_per_job']} loads/job;  wall time ratio "
        f"{results['affinity_wall_vs_fifo_ratio']}")


def _alternating_run(server: Any, jobs: int) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as client:
        before = client.post("/v1/bench/swap/run", json={"mode": "sync", "model": "a", "ms": 0}).json()
        loads_before = before["result"]["loads"]
        t0 = time.perf_counter()
        ids = [client.post("/v1/bench/swap/run", json={"model": "ba"[i % 2]}).json()["job_id"]
               for i in range(jobs)]
        done = []
        for job_id in ids:
            while (job := client.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json())["status"] in (
                    "queued", "running"):
                pass
            done.append(job)
        wall = time.perf_counter() - t0
    if any(job["status"] != "succeeded" for job in done):
        raise RuntimeError(f"swap jobs failed: {[job.get('error') for job in done if job.get('error')]}")
    started = [job["id"] for job in sorted(done, key=lambda job: job["started_at"])]
    overtaken = [sum(1 for other in started[:started.index(job_id)] if ids.index(other) > index)
                 for index, job_id in enumerate(ids)]
    loads = max(job["result"]["loads"] for job in done) - loads_before
    return {"loads": loads, "max_overtaken": max(overtaken), "wall_s": wall}


__all__ = ["measure_affinity", "measure_peers"]
