"""KWOK-simulated nodes beside the real node, for scale tests."""

from __future__ import annotations

import json
import time

import pytest

from .conftest import LabCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]  # may build kwok (minutes, cold)

COUNT = 3


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
