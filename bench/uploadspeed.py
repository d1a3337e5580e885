"""Upload figures: kiapi's uploads against a plain copy and against the floor of its stack.

``bench/run.py``'s ``rawupload`` section calls :func:`measure_uploads`. Each round, in turn
and on the same disk (the server's data directory):

- **copy**: ``shutil.copyfile`` of the file (``copy_file_range``: no byte reaches user
  space), then ``fsync``;
- **floor**: ``curl -T`` of the file to a bare Starlette+Hypercorn app (``bench/bare_app.py
  --serve-tuning``: the same Hypercorn set-up as ``kiapi serve``) that reads the body and
  throws it away. Nothing kiapi does is in it: no hashing, no disk, no multipart. An upload
  that hashes and stores its bytes cannot be faster than this on the same machine;
- **raw**: ``curl -T`` to kiapi (``PUT /v1/files?filename=``);
- **multipart**: ``curl -F file=@...`` to kiapi (``POST /v1/files``).

Medians over the rounds; the CPU seconds each server process used per upload are read from
``/proc`` (they vary much less with the machine's load than wall times do). The client runs
on the same cores: on a 2-core machine curl's own ~0.5–0.9 s of CPU per GiB competes with the
server's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far; 0 if unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def copy_and_sync(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as fh:
        os.fsync(fh.fileno())
    dst.unlink()


def measure_uploads(profile: Any, server: Any, workdir: Path, results: dict[str, Any], say: Any,
                    start_peer: Callable[..., Any], free_port: Callable[[], int]) -> None:
    """The four transfers above, interleaved for ``profile.upload_reps`` rounds."""
    curl = shutil.which("curl")
    if curl is None:
        results["raw_upload_note"] = "curl not found"
        return
    mib = profile.upload_mib
    src = server.data / "bench-upload-src.bin"
    _write_random(src, mib)
    (workdir / "drain-health.json").write_bytes(b"{}")
    (workdir / "drain.png").write_bytes(b"")
    port = free_port()
    bare = start_peer("bare-drain", [sys.executable, str(HERE / "bare_app.py"), "--port", str(port), "--png",
                                     str(workdir / "drain.png"), "--health", str(workdir / "drain-health.json"),
                                     "--serve-tuning"], port, workdir)
    runs: dict[str, list[tuple[float, float]]] = {"copy": [], "floor": [], "raw": [], "multipart": []}
    try:
        bare.wait_ready("/health")
        floor = [curl, "-sS", "--fail-with-body", "-T", str(src), "-H", "Expect:", f"http://127.0.0.1:{port}/drain"]
        raw = [curl, "-sS", "--fail-with-body", "-T", str(src), "-H", "Expect:", f"{server.url}/v1/files?filename=bench.bin"]
        multipart = [curl, "-sS", "--fail-with-body", "-F", f"file=@{src}", "-H", "Expect:", f"{server.url}/v1/files"]
        for _ in range(profile.upload_reps):
            t0 = time.perf_counter()
            copy_and_sync(src, server.data / "bench-upload-dst.bin")
            runs["copy"].append((time.perf_counter() - t0, 0.0))
            runs["floor"].append(_timed(floor, bare.proc.pid, mib, curl, None))
            runs["raw"].append(_timed(raw, server.pid, mib, curl, server.url))
            runs["multipart"].append(_timed(multipart, server.pid, mib, curl, server.url))
    finally:
        bare.stop()
        src.unlink(missing_ok=True)
    _report(runs, mib, results, say)


def _write_random(path: Path, mib: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(block)
        os.fsync(fh.fileno())


def _timed(cmd: list[str], pid: int, mib: int, curl: str, kiapi_url: str | None) -> tuple[float, float]:
    """(wall seconds, server CPU seconds) of one upload; a stored file is deleted after."""
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, timeout=600)
    took, cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[-1]}: curl failed: {done.stdout[:300]!r} {done.stderr[:300]!r}")
    record = json.loads(done.stdout)
    if record["size"] != mib * MiB:
        raise RuntimeError(f"{cmd[-1]} received {record['size']} bytes, sent {mib * MiB}")
    if kiapi_url is not None:
        subprocess.run([curl, "-sS", "-X", "DELETE", f"{kiapi_url}/v1/files/{record['file_id']}"],
                       capture_output=True, timeout=60)
    return took, cpu


def _report(runs: dict[str, list[tuple[float, float]]], mib: int, results: dict[str, Any], say: Any) -> None:
    wall = {name: statistics.median(t for t, _ in values) for name, values in runs.items()}
    cpu = {name: statistics.median(c for _, c in values) for name, values in runs.items()}
    gib = mib / 1024
    results["raw_upload_mib_per_s"] = round(mib / wall["raw"], 1)
    results["raw_upload_vs_copy_ratio"] = round(wall["copy"] / wall["raw"], 3)
    results["multipart_curl_upload_vs_copy_ratio"] = round(wall["copy"] / wall["multipart"], 3)
    results["upload_floor_vs_copy_ratio"] = round(wall["copy"] / wall["floor"], 3)
    results["raw_upload_vs_floor_ratio"] = round(wall["floor"] / wall["raw"], 3)
    results["multipart_upload_vs_floor_ratio"] = round(wall["floor"] / wall["multipart"], 3)
    for name in ("floor", "raw", "multipart"):
        results[f"{name}_upload_server_cpu_s_per_gib"] = round(cpu[name] / gib, 3)
    results["upload_load_average"] = round(os.getloadavg()[0], 2)
    say(f"  copy + fsync                     {wall['copy']:.2f} s = {mib / wall['copy']:.0f} MiB/s")
    for name, label in (("floor", "bare app, body thrown away"), ("raw", "kiapi curl -T (raw body)"),
                        ("multipart", "kiapi curl -F (multipart)")):
        say(f"  {label:32s} {wall[name]:.2f} s = {mib / wall[name]:.0f} MiB/s; ratio to the copy "
            f"{wall['copy'] / wall[name]:.2f}; server CPU {cpu[name] / gib:.2f} s/GiB")
    say(f"  (medians of {len(runs['copy'])} interleaved rounds; load average {results['upload_load_average']})")


__all__ = ["cpu_s", "measure_uploads"]
