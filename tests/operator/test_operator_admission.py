"""The generated CRD in a real kube-apiserver: installs and is Established, refuses every bad
spec at admission naming the field, fills defaults, serves the descriptions to explain."""

from __future__ import annotations

import re
import subprocess
import time
from typing import Any

import pytest
from conftest import POLICIES, Cluster, needs_etcd
from operator_bad_specs import BAD_SPECS, BadSpec

from openxpu_lab.gobuild import kubectl_path
from openxpu_operator.policy import XPUClusterPolicySpec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800), needs_etcd]


def _normalize(text: str) -> str:
    return re.sub(r"\[([^\]]*)\]", r".\1", text)


def test_crd_is_established_with_no_structural_complaints(cluster: Cluster) -> None:
    crd = cluster.http.get(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/xpuclusterpolicies.openxpu.io"
    ).json()
    conditions = {c["type"]: c for c in crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert crd["status"]["acceptedNames"]["shortNames"] == ["xcp"]


@pytest.mark.parametrize("bad", BAD_SPECS, ids=[b.id for b in BAD_SPECS])
def test_bad_spec_refused_at_admission_naming_the_field(cluster: Cluster, bad: BadSpec) -> None:
    r = cluster.policy("bad", bad.spec)
    assert r.status_code == 422, f"admitted: {bad.spec}\n{r.text}"
    status = r.json()
    causes = [
        f"{c.get('field', '')}: {c.get('message', '')}"
        for c in status.get("details", {}).get("causes", [])
    ]
    assert any(bad.field in _normalize(c) for c in causes), f"{bad.field} not in {causes}"


def test_unknown_field_refused_with_strict_field_validation(cluster: Cluster) -> None:
    r = cluster.policy("typo", {"driver": {"versoin": "1.2.3"}}, fieldValidation="Strict")
    # A strict decoding error is a 400 (BadRequest), before any schema validation.
    assert r.status_code == 400, r.text
    assert 'unknown field "spec.driver.versoin"' in r.json()["message"]


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value]
    return value


def test_empty_spec_gets_the_operators_defaults(cluster: Cluster) -> None:
    r = cluster.policy("defaults", {})
    assert r.status_code == 201, r.text
    try:
        stored = cluster.http.get(f"{POLICIES}/defaults").json()["spec"]
        expected = _without_none(XPUClusterPolicySpec().model_dump(mode="json", by_alias=True))
        assert stored == expected
        assert stored["driver"]["upgradePolicy"]["maxUnavailable"] == "25%"
        assert stored["devicePlugin"]["config"]["sharing"]["timeSlicing"]["replicas"] == 1
    finally:
        cluster.http.delete(f"{POLICIES}/defaults")


def test_good_policy_with_every_section_is_admitted(cluster: Cluster) -> None:
    spec = {
        "daemonsets": {
            "tolerations": [
                {"key": "openxpu.io/xpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "maxUnavailable": "50%",
        },
        "driver": {"version": "1.2.3-rc.1", "upgradePolicy": {"maxUnavailable": 2}},
        "cdi": {"default": True},
        "devicePlugin": {"config": {"sharing": {"timeSlicing": {"replicas": 4}}}},
        "exporter": {"dcgmCompat": True, "serviceMonitor": {"enabled": True, "interval": "30s"}},
        "emulation": {
            "profiles": {"small": {"base": "x1-8", "devices": 4, "linkGroups": 2}},
            "nodePools": [{"name": "a", "nodeSelector": {"pool": "a"}, "profile": "small"}],
        },
        "nodeSelector": {"openxpu.io/xpu.capable": "true"},
    }
    r = cluster.policy("full", spec)
    assert r.status_code == 201, r.text
    cluster.http.delete(f"{POLICIES}/full")


def _explain(cluster: Cluster, path: str) -> str:
    # The API server publishes a new CRD's OpenAPI v3 a moment after Established (seconds on
    # a loaded machine); until then kubectl says it has no such resource type.
    deadline = time.monotonic() + 60
    while True:
        r = subprocess.run(
            [str(kubectl_path()), "--kubeconfig", str(cluster.api.kubeconfig), "explain", path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode == 0 or time.monotonic() > deadline:
            assert r.returncode == 0, r.stderr
            return r.stdout
        time.sleep(1)


def test_explain_shows_the_descriptions(cluster: Cluster) -> None:
    driver = _explain(cluster, "xcp.spec.driver")
    assert "The emulated XPU driver" in driver
    assert "upgradePolicy" in driver and "How driver upgrades roll across nodes" in driver
    pools = _explain(cluster, "xcp.spec.emulation.nodePools")
    assert "Node pools in order of precedence" in pools
    assert "The pool's profile" in pools


def test_printer_columns_in_kubectl_get(cluster: Cluster) -> None:
    r = cluster.policy("columns", {})
    assert r.status_code == 201, r.text
    try:
        status = {"state": "notReady", "operandsReady": "3/5", "nodesReady": "1/2"}
        body = {**r.json(), "status": status}
        s = cluster.http.put(f"{POLICIES}/columns/status", json=body)
        assert s.status_code == 200, s.text
        out = subprocess.run(
            [str(kubectl_path()), "--kubeconfig", str(cluster.api.kubeconfig), "get", "xcp"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        header, row = out.splitlines()[:2]
        assert header.split() == ["NAME", "STATE", "OPERANDS", "XPU", "NODES", "AGE"]
        assert row.split()[:4] == ["columns", "notReady", "3/5", "1/2"]
    finally:
        cluster.http.delete(f"{POLICIES}/columns")
