"""KWOK-simulated nodes beside the real node, for scale tests."""

from __future__ import annotations

import json
import time

import pytest

from openxpu_lab import procs

from .conftest import LabCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # may build kwok (minutes, cold)

COUNT = 3


def _assert_kwok_has_its_own_identity(lab_cluster: LabCluster) -> None:
    """The controller drives node and pod status with a kubeconfig that cannot do more."""
    record = procs.read("kwok", lab_cluster.lab.layout.pids)
    assert record is not None
    kubeconfig = next(a for a in record["argv"] if a.startswith("--kubeconfig=")).split("=", 1)[1]

    def can_i(*request: str) -> str:
        r = lab_cluster.kubectl("--kubeconfig", kubeconfig, "auth", "can-i", *request, check=False)
        return r.stdout.strip()

    assert can_i("patch", "nodes", "--subresource=status") == "yes"
    assert can_i("create", "pods") == "no"
    assert can_i("delete", "nodes") == "no"


def test_kwok_nodes_join_and_run_pods(lab_cluster: LabCluster) -> None:
    lab = lab_cluster.lab
    lab.up(openxpu_image=False, kwok_nodes=COUNT)
    try:
        deadline = time.monotonic() + 120
        ready: list[str] = []
        while time.monotonic() < deadline:
            nodes = lab_cluster.kubectl_json("get", "nodes", "-l", "type=kwok")
            ready = [
                n["metadata"]["name"]
                for n in nodes["items"]  # type: ignore[attr-defined]
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            ]
            if len(ready) == COUNT:
                break
            time.sleep(1)
        assert len(ready) == COUNT, f"KWOK nodes Ready: {ready}"
        _assert_kwok_has_its_own_identity(lab_cluster)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "kwok-scale"},
            "spec": {
                "replicas": 6,
                "selector": {"matchLabels": {"app": "kwok-scale"}},
                "template": {
                    "metadata": {"labels": {"app": "kwok-scale"}},
                    "spec": {
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists"}],
                        "containers": [{"name": "c", "image": "fake"}],
                    },
                },
            },
        }
        lab_cluster.kubectl("apply", "-f", "-", input_text=json.dumps(deployment))
        deadline = time.monotonic() + 120
        running = 0
        while time.monotonic() < deadline:
            r = lab_cluster.kubectl(
                "get", "pods", "-l", "app=kwok-scale", "-o", "jsonpath={.items[*].status.phase}"
            )
            running = r.stdout.split().count("Running")
            if running == 6:
                break
            time.sleep(1)
        assert running == 6
        # The real node got none of them.
        real = lab_cluster.kubectl(
            "get", "pods", "-l", "app=kwok-scale", "-o", "jsonpath={.items[*].spec.nodeName}"
        ).stdout.split()
        assert lab_cluster.node_name not in real
    finally:
        lab_cluster.kubectl("delete", "deployment", "kwok-scale", "--wait=false", check=False)
        lab.up(openxpu_image=False, kwok_nodes=0)
    assert lab_cluster.kubectl("get", "nodes", "-l", "type=kwok", "-o", "name").stdout == ""
