"""The shipped dashboard and alert rules: in sync with the code, well-formed, valid for promtool."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from openxpu_exporter import alerts, compat, dashboard, render
from openxpu_exporter.collector import native_names

from .prometheus import ensure_installed

KNOWN = set(native_names()) | {f.name for f in compat.FIELDS}
EXPORTER_SELF = re.compile(r"^(openxpu_exporter_\w+|process_\w+|up)$")


@pytest.mark.unit
def test_committed_files_match_the_code() -> None:
    assert render.main(["--check"]) == 0, "run: uv run python -m openxpu_exporter.render"


@pytest.mark.unit
def test_dcgm_table_names_served_metrics() -> None:
    for field in compat.FIELDS:
        natives = re.findall(r"\bopenxpu_\w+", field.native)
        assert natives and set(natives) <= KNOWN, field


@pytest.mark.unit
def test_configmap_is_for_the_grafana_sidecar() -> None:
    cm = yaml.safe_load((render.DEPLOY / "grafana-dashboard-configmap.yaml").read_text())
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(cm["data"][render.DASHBOARD_FILE])
    assert board["uid"] == dashboard.UID
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["type"] in {"row", "stat", "timeseries", "table"}
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24


@pytest.mark.unit
def test_prometheus_rule_shape() -> None:
    rule = yaml.safe_load((render.DEPLOY / "prometheus-rule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert names == [r["alert"] for r in alerts.RULES]
    for r in rule["spec"]["groups"][0]["rules"]:
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["annotations"]["summary"] and r["annotations"]["description"]


@pytest.mark.unit
def test_queries_name_only_metrics_the_exporter_serves() -> None:
    exprs = [e for _, e in dashboard.queries(dashboard.build())] + [r["expr"] for r in alerts.RULES]
    for expr in exprs:
        for name in re.findall(r"\b(?:openxpu|DCGM)_\w+", expr):
            name = re.sub(r"_bucket$", "", name)
            assert name in KNOWN or EXPORTER_SELF.match(name), f"{name} in {expr}"


@pytest.mark.integration
def test_promtool_accepts_the_rules() -> None:
    promtool = ensure_installed().parent / "promtool"
    path = Path(render.ASSETS / render.RULES_FILE)
    out = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts.RULES)} rules found" in out.stdout
