"""The benchmark harness runs end to end in its quick mode and ends with its JSON summary.

No timing is asserted: figures are for docs/performance.md, never for pass/fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("host_overhead_ratio", "poll_p99_ms", "startup_s", "cli_help_s", "upload_rss_growth_mib",
        "upload_vs_copy_ratio", "queue_jobs_per_s", "lora_vs_plain_ratio")


def test_quick_bench_prints_its_json_summary_last():
    pytest.importorskip("kiapi_ernie")
    pytest.importorskip("kiapi_seedvr2")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-2000:]
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict)
    missing = [key for key in KEYS if key not in summary]
    assert not missing, missing
    assert summary["errors"] == [], summary["errors"]
    assert all(isinstance(summary[key], (int, float)) for key in KEYS), {k: summary[k] for k in KEYS}
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
