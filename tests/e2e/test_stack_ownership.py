"""The e2e fixtures' rule "tests leave the cluster as they found it", against a real
kube-apiserver (apiserver-only, no nodes): what counts as an installed OpenXPU stack (a
policy, a chart's operator, demo/stack's hand-applied driver), when a test that installs its
own must skip and what it says, and which Ready Helm release `openxpu_release` reuses."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path

import pytest

from e2e.conftest import (
    CHART,
    Kubectl,
    Release,
    foreign_stack_reason,
    installed_stack,
    ready_release,
)
from openxpu_lab import apiserver_only
from openxpu_lab.gobuild import kubectl_path

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
        reason="needs etcd (root installs it with apt)",
    ),
]

DEMO_STACK = Path(__file__).resolve().parents[2] / "demo" / "stack"
HELM_LABELS = {
    "app.kubernetes.io/managed-by": "Helm",
    "app.kubernetes.io/instance": "demo",
    "app.kubernetes.io/part-of": "openxpu",
}


def _kubectl(
    kubeconfig: Path, *args: str, check: bool = True, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """LabCluster.kubectl's signature, on the apiserver-only cluster."""
    argv = [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args]
    out = subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=60)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out


@pytest.fixture
def kubectl() -> Iterator[Kubectl]:
    """A fresh API server per test: each starts from an empty cluster."""
    with apiserver_only() as api:
        yield partial(_kubectl, api.kubeconfig)


def _apply(kubectl: Kubectl, obj: Mapping[str, object]) -> None:
    kubectl("apply", "--server-side", "-f", "-", input_text=json.dumps(obj))


def test_an_empty_cluster_holds_no_stack(kubectl: Kubectl) -> None:
    assert installed_stack(kubectl) == ()  # no CRD either: an unknown type is no stack
    assert foreign_stack_reason(()) is None
    assert ready_release(kubectl) is None


def test_a_stack_found_at_the_start_is_named_and_reused_only_when_ready(
    kubectl: Kubectl,
) -> None:
    kubectl("apply", "--server-side", "-f", str(CHART / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/xpuclusterpolicies.openxpu.io")
    policy = {
        "apiVersion": "openxpu.io/v1",
        "kind": "XPUClusterPolicy",
        "metadata": {"name": "default", "labels": HELM_LABELS},
        "spec": {},
    }
    _apply(kubectl, policy)
    assert installed_stack(kubectl) == ("XPUClusterPolicy default (no status)",)
    assert ready_release(kubectl) is None  # a policy without the chart's operator

    kubectl("create", "namespace", "openxpu-demo")
    operator = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "demo-openxpu-operator",
            "namespace": "openxpu-demo",
            "labels": {**HELM_LABELS, "app.kubernetes.io/component": "operator"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "operator"}},
            "template": {
                "metadata": {"labels": {"app": "operator"}},
                "spec": {"containers": [{"name": "operator", "image": "openxpu/openxpu:dev"}]},
            },
        },
    }
    _apply(kubectl, operator)
    assert ready_release(kubectl) is None, "not reused while the policy is not Ready"
    kubectl(
        "patch", "xcp", "default", "--subresource=status", "--type=merge",
        "-p", '{"status": {"state": "ready"}}',
    )  # fmt: skip
    assert ready_release(kubectl) == Release("demo", "openxpu-demo", "default")

    found = installed_stack(kubectl)
    assert found == (
        "XPUClusterPolicy default (ready)",
        "Deployment openxpu-demo/demo-openxpu-operator",
    )
    reason = foreign_stack_reason(found)
    assert reason is not None
    assert all(item in reason for item in found)
    assert "installs and removes its own" in reason and "helm uninstall" in reason
    assert "workers" in (foreign_stack_reason(found, "it adds workers") or "")


def test_the_hand_applied_demo_stack_counts_as_a_stack(kubectl: Kubectl) -> None:
    """demo/stack/ (applied by an older `make demo`) has no policy and no operator."""
    for name in ("00-namespace.yaml", "10-driver.yaml"):
        kubectl("apply", "--server-side", "-f", str(DEMO_STACK / name))
    assert "DaemonSet openxpu/openxpu-driver" in installed_stack(kubectl)
