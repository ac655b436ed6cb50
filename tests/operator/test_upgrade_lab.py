"""A rolling driver upgrade on three real lab nodes (issue 11): the operator (a real
process, its ServiceAccount under deploy/rbac.yaml) runs the stack on every node; a
Deployment of three xpu-burn replicas, one per node, with a PodDisruptionBudget
maxUnavailable 1; driver.version 0.1.0 -> 0.2.0 with maxParallelUpgrades 1. The nodes go
one at a time, the workload never has fewer than 2 ready replicas (sampled throughout),
the operator is SIGKILLed twice mid-rollout and the rollout still completes: every node
ends upgrade-done with driver 0.2.0 in its feature-discovery label, and status.upgrade
says so; a sticky fault and ECC errors injected on one node beforehand (xpu-smi in its
driver pod, as an admin would) are still there.

Then (the second test, on the cluster the first left) a faulty driver release: the first
node taken fails its upgrade at the driver's first exit, the rollout holds, the other
nodes keep their driver and workload, and status, condition and metrics say which node and
why; rolling driver.version back to 0.2.0 brings every node back to upgrade-done, the
failed node uncordoned with its device state intact."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from e2e.conftest import (  # noqa: F401 (fixture)
    COLD_START_TIMEOUT,
    LabCluster,
    lab_cluster,
    require_no_foreign_stack,
)
from e2e.test_lab_multinode import _nsenter
from operator_process import CRD_PATH, RBAC_PATH, Operator
from test_controller_e2e import _operator_kubeconfig, wait_for
from test_upgrade_controller import _upgrade_metrics

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
FAILED = State.UPGRADE_FAILED.value
GOOD, FAULTY = "0.2.0", "0.3.0-faulty"
DRIVER_PODS = "app.kubernetes.io/component=driver"
# What an admin injects before the rollout on a free device of one node: a sticky
# double-bit ECC error (48: the device turns Unhealthy until cleared), two corrected ones.
STICKY, CORRECTED = 48, 63


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


@dataclass
class Rollout:
    seen: list[tuple[float, dict[str, str]]]  # each distinct state map, seconds after the patch
    lowest: int  # fewest ready workload replicas sampled
    took: float  # seconds from the patch to `until`

    def first(self, node: str, states: set[str]) -> float:
        return next(t for t, s in self.seen if s[node] in states)


def _roll_to(
    lab: LabCluster,
    nodes: list[str],
    version: str,
    until: Callable[[dict[str, str]], bool],
    timeout: float,
    during: Callable[[dict[str, str]], None] = lambda states: None,
) -> Rollout:
    """Patch driver.version and sample the nodes' states and the workload every second
    until `until(states)`: never two nodes upgrading at once."""
    started = time.monotonic()
    patch = {"spec": {"driver": {"version": version}}}
    lab.kubectl("patch", "xcp", "upgrade", "--type=merge", "-p", json.dumps(patch))
    seen: list[tuple[float, dict[str, str]]] = []
    lowest = 3
    while True:
        states = _states(lab, nodes)
        lowest = min(lowest, _ready_replicas(lab))
        if not seen or seen[-1][1] != states:
            seen.append((time.monotonic() - started, states))
        in_progress = [n for n, s in states.items() if s in IN_PROGRESS_NAMES]
        assert len(in_progress) <= 1, f"two nodes upgrading at once: {states}"
        during(states)
        if until(states):
            return Rollout(seen, lowest, time.monotonic() - started)
        waited = time.monotonic() - started
        assert waited < timeout, f"{version}: not there in {timeout} s: {seen[-3:]}"
        time.sleep(1)


def _driver_pod(lab: LabCluster, node: str) -> dict[str, Any]:
    pods = lab.kubectl_json(
        "get", "pods", "-n", NAMESPACE, "-l", DRIVER_PODS, f"--field-selector=spec.nodeName={node}"
    )["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]  # type: ignore[attr-defined]
    assert len(live) == 1, f"driver pods on {node}: {[p['metadata']['name'] for p in live]}"
    pod: dict[str, Any] = live[0]
    return pod


def _in_driver(lab: LabCluster, node: str, *command: str) -> str:
    """A command in the driver container of `node` (xpud's admin socket), as an admin runs it."""
    pod = _driver_pod(lab, node)["metadata"]["name"]
    return lab.kubectl("exec", "-n", NAMESPACE, pod, "-c", "driver", "--", *command).stdout


def _device_state(lab: LabCluster, node: str, index: int) -> tuple[dict[str, Any], float]:
    """What must survive a driver replacement on one device: its health, active faults and
    error counts, and (second) its energy counter, which only grows."""
    device = json.loads(_in_driver(lab, node, "xpu-smi", "--json"))["devices"][index]
    kept = {
        "health": device["health"],
        "faults": sorted(f["code"] for f in device["active_faults"]),
        "ecc": (device["ecc_corrected_total"], device["ecc_uncorrected_total"]),
        "errors": device["errors_total"],
    }
    return kept, device["energy_joules"]


def _free_device(lab: LabCluster, node: str) -> int:
    """A device of `node` that the burn replica there does not hold."""
    burn = lab.kubectl(
        "get",
        "pods",
        "-l",
        "app=upgrade-burn",
        f"--field-selector=spec.nodeName={node}",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout
    held = lab.kubectl("exec", burn, "--", "printenv", "XPU_VISIBLE_DEVICES").stdout.split(",")
    devices = json.loads(_in_driver(lab, node, "xpu-smi", "--json"))["devices"]
    free: int = next(d["index"] for d in devices if d["uuid"] not in {h.strip() for h in held})
    return free


def _condition(lab: LabCluster, kind: str) -> dict[str, Any]:
    conditions = (_policy(lab).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == kind), {})


def _driver_version_label(lab: LabCluster, node: str) -> str:
    jsonpath = r"jsonpath={.metadata.labels.openxpu\.io/driver\.version}"
    return lab.kubectl("get", "node", node, "-o", jsonpath).stdout


def _schedulable(lab: LabCluster, node: str) -> bool:
    return not lab.kubectl_json("get", "node", node)["spec"].get("unschedulable")  # type: ignore[attr-defined]


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

    faulted = sorted(nodes)[0]
    index = _free_device(lab, faulted)
    clean, _ = _device_state(lab, faulted, index)
    for code in (STICKY, CORRECTED, CORRECTED):
        _in_driver(lab, faulted, "xpu-smi", "inject-fault", "-i", str(index), "--code", str(code))
    before, energy = _device_state(lab, faulted, index)
    assert before["health"] == "Unhealthy" and STICKY in before["faults"], before
    # Counts only grow, and a lab node keeps its device state from run to run.
    assert before["ecc"] == (clean["ecc"][0] + 2, clean["ecc"][1] + 1), (clean, before)

    kills = 0

    def kill_mid_walk(states: dict[str, str]) -> None:
        # SIGKILL the operator twice mid-walk: a fresh process resumes from the labels.
        nonlocal kills
        in_progress = any(s in IN_PROGRESS_NAMES for s in states.values())
        if in_progress and kills < 2 and sum(s == DONE for s in states.values()) == kills:
            operators[-1].kill()
            kills += 1
            start()

    rollout = _roll_to(
        lab, nodes, GOOD, lambda s: set(s.values()) == {DONE}, 900, during=kill_mid_walk
    )
    assert kills == 2
    assert rollout.lowest >= 2, f"the workload fell to {rollout.lowest} ready replicas"

    # Per node: from taking it (cordon-required) to upgrade-done.
    breakdown = {
        node: round(rollout.first(node, {DONE}) - rollout.first(node, IN_PROGRESS_NAMES), 1)
        for node in nodes
    }
    print(
        f"\nrolling upgrade of 3 nodes: {rollout.took:.1f}s; per node {breakdown}; "
        f"lowest ready replicas {rollout.lowest}",
        file=sys.stderr,
    )
    wait_for(
        "driver 0.2.0 in every node's feature-discovery label",
        lambda: all(_driver_version_label(lab, n) == GOOD for n in nodes),
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
        assert _schedulable(lab, node), node
    # The device state came through the driver replacement (and the operator's kills).
    after, energy_after = _device_state(lab, faulted, index)
    assert after == before and energy_after >= energy, (before, after, energy, energy_after)
    lab.kubectl("rollout", "status", "deploy/upgrade-burn", "--timeout=180s", timeout=200)


def test_a_faulty_driver_fails_one_node_holds_the_rollout_and_a_rollback_recovers_it(
    three_node_stack: Any,
) -> None:
    lab, nodes, _, operators = three_node_stack
    states = _states(lab, nodes)
    assert set(states.values()) == {DONE}, f"runs after the 0.2.0 rollout test: {states}"
    drivers = {n: _driver_pod(lab, n)["metadata"]["uid"] for n in nodes}
    faulted = sorted(nodes)[0]
    index = next(  # the device the first test gave a sticky fault
        d["index"]
        for d in json.loads(_in_driver(lab, faulted, "xpu-smi", "--json"))["devices"]
        if STICKY in [f["code"] for f in d["active_faults"]]
    )
    before, energy = _device_state(lab, faulted, index)

    failing = _roll_to(lab, nodes, FAULTY, lambda s: FAILED in s.values(), 300)
    states = failing.seen[-1][1]
    (bad,) = [n for n, s in states.items() if s == FAILED]
    others = [n for n in nodes if n != bad]
    said = f"failed its start-up self-test (exit 3): xpud: driver {FAULTY} failed"
    condition = wait_for(
        "UpgradeFailed=True naming the node",
        lambda: (c := _condition(lab, "UpgradeFailed")).get("status") == "True" and c,
    )
    assert condition["reason"] == "NodeUpgradeFailed", condition
    assert bad in condition["message"] and said in condition["message"], condition
    upgrade = wait_for(
        "status.upgrade: one failed, the rollout held",
        lambda: (u := _policy(lab)["status"].get("upgrade") or {}).get("held") and u,
    )
    assert bad in upgrade["held"], upgrade
    (reported,) = [n for n in upgrade["nodes"] if n["state"] == FAILED]
    assert reported["name"] == bad and said in reported["reason"], upgrade
    assert _upgrade_metrics(operators[-1])["failed"] == 1
    # The others are untouched: never taken (marked upgrade-required, held), still running
    # the same 0.2.0 driver pod, schedulable, their replicas running.
    for node in others:
        assert all(s[node] not in IN_PROGRESS_NAMES for _, s in failing.seen), node
        assert states[node] == State.UPGRADE_REQUIRED.value, states
        assert _driver_pod(lab, node)["metadata"]["uid"] == drivers[node], node
        assert _driver_version_label(lab, node) == GOOD, node
        assert _schedulable(lab, node), node
    assert not _schedulable(lab, bad), "a failed node stays cordoned"
    assert _ready_replicas(lab) >= 2 and failing.lowest >= 2, failing.lowest
    detected = failing.took - failing.first(bad, IN_PROGRESS_NAMES)

    rollback = _roll_to(lab, nodes, GOOD, lambda s: set(s.values()) == {DONE}, 300)
    assert rollback.lowest >= 2, f"the workload fell to {rollback.lowest} ready replicas"
    print(
        f"\nfaulty driver {FAULTY}: node {bad} upgrade-failed {failing.took:.1f}s after the "
        f"patch ({detected:.1f}s after it was taken); rollback to {GOOD}: every node "
        f"upgrade-done in {rollback.took:.1f}s",
        file=sys.stderr,
    )
    wait_for(
        "UpgradeFailed=False",
        lambda: _condition(lab, "UpgradeFailed").get("status") == "False",
    )
    for node in nodes:
        assert _schedulable(lab, node), node  # none was cordoned before the upgrade
    for node in others:
        assert _driver_pod(lab, node)["metadata"]["uid"] == drivers[node], "restarted"
    wait_for(
        "driver 0.2.0 in every node's feature-discovery label",
        lambda: all(_driver_version_label(lab, n) == GOOD for n in nodes),
        180,
    )
    after, energy_after = _device_state(lab, faulted, index)
    assert after == before and energy_after >= energy, (before, after, energy, energy_after)
    assert _upgrade_metrics(operators[-1])["failed"] == 0
    lab.kubectl("rollout", "status", "deploy/upgrade-burn", "--timeout=180s", timeout=200)
    _in_driver(lab, faulted, "xpu-smi", "clear-fault", "-i", str(index))


def test_uninstall_removes_the_host_files_of_every_node(three_node_stack: Any) -> None:
    """Deleting the policy runs a cleanup pod on every node, the workers (whose /run/openxpu
    is a mount of their own) included: none is given up on (CleanupIncomplete)."""
    lab, nodes, _, _ = three_node_stack
    for doc in _workload(lab.images["openxpu"]):
        lab.kubectl("delete", doc["kind"], doc["metadata"]["name"], "-n", "default")
    uid = _policy(lab)["metadata"]["uid"]
    started = time.monotonic()
    lab.kubectl(
        "delete",
        "xcp",
        "upgrade",
        f"--timeout={CLEANUP_TIMEOUT + 60}s",
        timeout=CLEANUP_TIMEOUT + 80,
    )
    took = time.monotonic() - started
    events = lab.kubectl_json("get", "events", "-A", "--field-selector=reason=CleanupIncomplete")
    given_up = [
        e["message"]
        for e in events["items"]  # type: ignore[attr-defined]
        if e["involvedObject"].get("uid") == uid
    ]
    assert not given_up, given_up
    for node in nodes:
        left = _nsenter(
            lab, node, "ls -d /opt/openxpu/driver /dev/xpu[0-9]* /run/openxpu/* 2>/dev/null || true"
        )
        assert left.strip() == "", f"{node}: {left}"
    print(f"\npolicy deleted -> every node cleaned: {took:.1f}s", file=sys.stderr)
