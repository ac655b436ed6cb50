"""A rolling driver upgrade on three real lab nodes (issue 11): the operator (a real
process, its ServiceAccount under deploy/rbac.yaml) runs the stack on every node; a
Deployment of three xpu-burn replicas, one per node, with a PodDisruptionBudget
maxUnavailable 1; driver.version 0.1.0 -> 0.2.0 with maxParallelUpgrades 1. The nodes go
one at a time, the workload never has fewer than 2 ready replicas (sampled throughout),
the operator is SIGKILLed twice mid-rollout and the rollout still completes: every node
ends upgrade-done with driver 0.2.0 in its feature-discovery label, and status.upgrade
says so."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e.conftest import (  # noqa: F401 (fixture)
    COLD_START_TIMEOUT,
    LabCluster,
    lab_cluster,
    require_no_foreign_stack,
)
from operator_process import CRD_PATH, RBAC_PATH, Operator
from test_controller_e2e import _operator_kubeconfig, wait_for

from openxpu_operator.upgrade.machine import IN_PROGRESS, STATE_LABEL, State

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

NAMESPACE = "openxpu"
MEMBER = "openxpu-e2e/upgrade"
SPEC: dict[str, Any] = {
    "nodeSelector": {MEMBER: "true"},
    "emulation": {
        "defaultProfile": "lab",
        "profiles": {"lab": {"base": "x1-8", "devices": 2}},
    },
    "driver": {
        "version": "0.1.0",
        "upgradePolicy": {"maxParallelUpgrades": 1, "maxUnavailable": 1},
    },
}
CLEANUP_TIMEOUT = 180
IN_PROGRESS_NAMES = {s.value for s in IN_PROGRESS}
DONE = State.UPGRADE_DONE.value


def _workload(image: str) -> list[dict[str, Any]]:
    labels = {"app": "upgrade-burn"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "upgrade-burn", "namespace": "default"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": labels},
                        }
                    ],
                    "containers": [
                        {
                            "name": "burn",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": ["xpu-burn", "--duration", "3600", "--utilization", "0.3"],
                            "resources": {"limits": {"openxpu.io/xpu": 1}},
                            "securityContext": {
                                "runAsUser": 1000,
                                "allowPrivilegeEscalation": False,
                            },
                        }
                    ],
                },
            },
        },
    }
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "upgrade-burn", "namespace": "default"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels}},
    }
    return [deployment, pdb]


def _policy(lab: LabCluster) -> dict[str, Any]:
    out = lab.kubectl("get", "xcp", "upgrade", "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _states(lab: LabCluster, nodes: list[str]) -> dict[str, str]:
    items = lab.kubectl_json("get", "nodes", "-l", f"{MEMBER}=true")["items"]
    labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in items}  # type: ignore[attr-defined]
    return {n: labels.get(n, {}).get(STATE_LABEL, "") for n in nodes}


def _ready_replicas(lab: LabCluster) -> int:
    out = lab.kubectl_json("get", "deploy", "upgrade-burn", "-n", "default")
    return int(out["status"].get("readyReplicas", 0))  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def three_node_stack(lab_cluster: LabCluster, tmp_path_factory: Any) -> Iterator[Any]:  # noqa: F811
    lab = lab_cluster
    require_no_foreign_stack(lab)  # it deletes the CRD (and so every policy) at the end
    res = lab.lab.up(nodes_count=3)
    nodes: list[str] = res.info["nodes"]
    for node in nodes:
        lab.kubectl("label", "node", node, f"{MEMBER}=true", "--overwrite")
    lab.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
    lab.kubectl("wait", "--for=condition=Established", "crd/xpuclusterpolicies.openxpu.io")
    lab.kubectl("create", "namespace", NAMESPACE, check=False)
    lab.kubectl("apply", "-f", str(RBAC_PATH))
    tmp = tmp_path_factory.mktemp("upgrade")
    kubeconfig = _operator_kubeconfig(lab, tmp / "operator.kubeconfig")
    operators: list[Operator] = []

    def start(identity: str = "replica-a") -> Operator:
        op = Operator(kubeconfig, identity, tmp / f"{identity}.log", CLEANUP_TIMEOUT)
        operators.append(op)
        return op

    start()
    try:
        body = {"apiVersion": "openxpu.io/v1", "kind": "XPUClusterPolicy"}
        body |= {"metadata": {"name": "upgrade"}, "spec": SPEC}
        lab.kubectl("create", "-f", "-", input_text=json.dumps(body))
        wait_for(
            "the policy Ready on three nodes",
            lambda: (
                (_policy(lab).get("status") or {}).get("nodesReady") == "3/3"
                and _policy(lab)["status"]["state"] == "ready"
            ),
            900,
        )
        yield lab, nodes, start, operators
    finally:
        for doc in _workload(lab.images["openxpu"]):
            lab.kubectl(
                "delete", doc["kind"], doc["metadata"]["name"], "-n", "default", check=False
            )
        lab.kubectl(
            "delete",
            "xcp",
            "upgrade",
            "--ignore-not-found",
            f"--timeout={CLEANUP_TIMEOUT + 60}s",
            check=False,
            timeout=CLEANUP_TIMEOUT + 80,
        )
        for op in operators:
            op.stop()
        print(operators[-1].output()[-3000:], file=sys.stderr)
        lab.kubectl("delete", "-f", str(RBAC_PATH), "--ignore-not-found", check=False)
        lab.kubectl("delete", "-f", str(CRD_PATH), "--ignore-not-found", check=False)
        for node in nodes:
            lab.kubectl("label", "node", node, f"{MEMBER}-", check=False)
        lab.lab.up(openxpu_image=False, nodes_count=1)


def test_rolling_upgrade_keeps_the_workload_and_survives_operator_kills(
    three_node_stack: Any,
) -> None:
    lab, nodes, start, operators = three_node_stack
    lab.kubectl(
        "apply",
        "-f",
        "-",
        input_text=json.dumps(
            {"kind": "List", "apiVersion": "v1", "items": _workload(lab.images["openxpu"])}
        ),
    )
    lab.kubectl("rollout", "status", "deploy/upgrade-burn", "--timeout=180s", timeout=200)
    placed = lab.kubectl(
        "get", "pods", "-l", "app=upgrade-burn", "-o", "jsonpath={.items[*].spec.nodeName}"
    ).stdout.split()
    assert sorted(placed) == sorted(nodes), "one replica per node"

    started = time.monotonic()
    patch = {"spec": {"driver": {"version": "0.2.0"}}}
    lab.kubectl("patch", "xcp", "upgrade", "--type=merge", "-p", json.dumps(patch))
    seen: list[tuple[float, dict[str, str]]] = []
    lowest = 3
    kills = 0
    deadline = time.monotonic() + 900
    while True:
        states = _states(lab, nodes)
        lowest = min(lowest, _ready_replicas(lab))
        if not seen or seen[-1][1] != states:
            seen.append((time.monotonic() - started, states))
        in_progress = [n for n, s in states.items() if s in IN_PROGRESS_NAMES]
        assert len(in_progress) <= 1, f"two nodes upgrading at once: {states}"
        # SIGKILL the operator twice mid-walk: a fresh process resumes from the labels.
        walked = sum(s == DONE for s in states.values())
        if in_progress and kills < 2 and walked == kills:
            operators[-1].kill()
            kills += 1
            start()
        if set(states.values()) == {DONE}:
            break
        assert time.monotonic() < deadline, f"rollout not done in 900 s: {seen[-3:]}"
        time.sleep(1)
    total = time.monotonic() - started
    assert kills == 2
    assert lowest >= 2, f"the workload fell to {lowest} ready replicas"

    # Per node: from taking it (cordon-required) to upgrade-done.
    breakdown = {}
    for node in nodes:
        took = next(t for t, s in seen if s[node] in IN_PROGRESS_NAMES)
        done = next(t for t, s in seen if s[node] == DONE)
        breakdown[node] = round(done - took, 1)
    print(
        f"\nrolling upgrade of 3 nodes: {total:.1f}s; per node {breakdown}; "
        f"lowest ready replicas {lowest}",
        file=sys.stderr,
    )
    wait_for(
        "driver 0.2.0 in every node's feature-discovery label",
        lambda: all(
            lab.kubectl(
                "get", "node", n, "-o", r"jsonpath={.metadata.labels.openxpu\.io/driver\.version}"
            ).stdout
            == "0.2.0"
            for n in nodes
        ),
        180,
    )
    status = wait_for(
        "status.upgrade: three done",
        lambda: (
            (u := (_policy(lab).get("status") or {}).get("upgrade") or {})
            .get("counts", {})
            .get(DONE)
            == 3
            and u
        ),
    )
    assert status["nodes"] == []
    for node in nodes:
        assert not lab.kubectl_json("get", "node", node)["spec"].get("unschedulable")
    lab.kubectl("rollout", "status", "deploy/upgrade-burn", "--timeout=180s", timeout=200)
