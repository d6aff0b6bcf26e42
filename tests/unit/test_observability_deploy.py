"""The dashboard and the alert rules in deploy/ speak of metrics that exist: every series a
panel or a rule queries is one the coordinator or a participant exports; the rules pass
`promtool check rules` and their unit tests (`promtool test rules`); each alert is explained in
docs/operations.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from coordinator.metrics import Metrics
from participants.sdk.metrics import ParticipantMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "txn-dashboard.json"
SERIES = re.compile(r"\b(txnp?_[a-z_]+)\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported() -> set[str]:
    names = set()
    for registry in (Metrics().registry, ParticipantMetrics().registry):
        for family in registry.collect():
            names |= {family.name + s for s in SUFFIXES[family.type]}
    return names


def promtool() -> str:
    found = shutil.which("promtool") or str(Path(sys.executable).parent / "promtool")
    assert Path(found).exists(), "promtool is needed: ./run tests fetches it into .venv/bin"
    return found


def test_every_panel_queries_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = exported()
    assert dashboard["panels"], "no panels"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(SERIES.findall(target["expr"]))
            assert used, (panel["title"], target["expr"])
            assert used <= known, (panel["title"], used - known)


def test_every_rule_queries_exported_series_and_is_documented() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    known = exported()
    operations = (ROOT / "docs" / "operations.md").read_text()
    alerts = [r for group in rules["groups"] for r in group["rules"]]
    assert len(alerts) >= 5
    for rule in alerts:
        used = set(SERIES.findall(rule["expr"]))
        assert used and used <= known, (rule["alert"], used - known)
        assert f"`{rule['alert']}`" in operations, f"{rule['alert']} is not in docs/operations.md"


def test_promtool_checks_the_rules_and_runs_their_tests() -> None:
    tool = promtool()
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(
            [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
