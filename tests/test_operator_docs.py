"""The operator guide's service files and Grafana dashboard are valid and match the server."""

from __future__ import annotations

import configparser
import json
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kiapi_core.testing import build_test_host

ROOT = Path(__file__).resolve().parents[1]
SERVICE = ROOT / "docs" / "service"
GUIDE = (ROOT / "docs" / "operators.md").read_text()


def block(language: str, marker: str) -> str:
    return next(b for b in re.findall(rf"```{language}\n(.*?)```", GUIDE, re.S) if marker in b)


def test_launchd_plist_parses_and_is_the_one_in_the_guide():
    text = (SERVICE / "org.kiapi.server.plist").read_text()
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "org.kiapi.server" and plist["ProgramArguments"][1:] == ["serve"]
    assert plist["ProgramArguments"][0].endswith("/.venv/bin/kiapi") and plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["ExitTimeOut"] > 30  # > the drain grace
    assert plist["StandardErrorPath"].endswith(".log")
    assert block("xml", "org.kiapi.server").strip() == text.strip()


def test_systemd_unit_parses_verifies_and_is_the_one_in_the_guide(tmp_path):
    text = (SERVICE / "kiapi.service").read_text()
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["ExecStart"].split() == ["/opt/kiapi/.venv/bin/kiapi", "serve"]
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) > 30
    assert service["Restart"] == "on-failure" and unit["Install"]["WantedBy"] == "multi-user.target"
    assert block("ini", "[Service]").strip() == text.strip()
    analyze = shutil.which("systemd-analyze")
    if analyze:  # systemd's own checker, with paths that exist on this machine
        local = text.replace("/opt/kiapi/.venv/bin/kiapi", str(Path(sys.executable).parent / "kiapi"))
        local = local.replace("WorkingDirectory=/opt/kiapi", f"WorkingDirectory={tmp_path}")
        (tmp_path / "kiapi.service").write_text(local)
        result = subprocess.run([analyze, "verify", str(tmp_path / "kiapi.service")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_grafana_dashboard_only_uses_metrics_the_server_exposes(tmp_path):
    dashboard = json.loads((ROOT / "docs" / "grafana" / "kiapi-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for e in exprs for name in re.findall(r"\bkiapi_\w+", e)}
    host = build_test_host(tmp_path)
    exposed: set[str] = set()
    for family in text_string_to_metric_families(host.metrics.render().decode()):
        exposed.add(family.name)
        if family.type == "counter":  # a labelled counter has no sample before its first event
            exposed.add(family.name + "_total")
        exposed.update(sample.name for sample in family.samples)
    assert used and used <= exposed, used - exposed
    documented = set(re.findall(r"`(kiapi_\w+)`", GUIDE.split("## 11. Metrics")[1].split("## 12.")[0]))
    assert used <= documented | {"kiapi_info"}, used - documented
