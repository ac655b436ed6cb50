"""The OpenXPU stack (demo/stack) on three real lab nodes: its DaemonSets run one pod per
node, each node advertises its own 8 XPUs (distinct UUIDs), three pods of 8 XPUs land on
three different nodes and a fourth waits with the scheduler's reason, a node's
/run/openxpu is its own, and a stopped node's XPUs leave the scheduler's view until it
starts again.

The module grows the session's lab to three nodes and shrinks it back to one at the end.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from .conftest import LabCluster, require_no_foreign_stack
from .test_lab_multinode import _nsenter
from .test_openxpu_stack import DAEMONSETS, DEMO, RESOURCE

pytestmark = pytest.mark.e2e

PER_NODE = 8  # demo/stack/10-driver.yaml installs profile x1-8 on every node
UUIDS = (
    "import time; from openxpu_runtime.xpu import XpuSession; s = XpuSession(); "
    "print(' '.join(d.uuid for d in s.devices), flush=True); s.close(); time.sleep(600)"
)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def allocatable(lab: LabCluster) -> dict[str, int]:
    out = lab.kubectl_json("get", "nodes", "-l", "!type")
    return {
        n["metadata"]["name"]: int(n["status"].get("allocatable", {}).get(RESOURCE, "0"))
        for n in out["items"]  # type: ignore[attr-defined]
    }


def xpu_pod(lab: LabCluster, prefix: str, xpus: int, command: list[str]) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"openxpu-e2e": "multinode-stack"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": lab.images["openxpu"],
                    "imagePullPolicy": "Never",
                    "command": command,
                    "resources": {"limits": {RESOURCE: xpus}},
                    "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": False},
                }
            ],
        },
    }
    lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
    return name


def pod(lab: LabCluster, name: str) -> dict[str, Any]:
    return lab.kubectl_json("get", "pod", name)


def unschedulable_message(lab: LabCluster, name: str) -> str:
    status = pod(lab, name)["status"]
    for c in status.get("conditions") or []:
        if c.get("reason") == "Unschedulable":
            return str(c.get("message", ""))
    return ""


def delete_test_pods(lab: LabCluster) -> None:
    lab.kubectl(
        "delete", "pod", "-l", "openxpu-e2e=multinode-stack", "--grace-period=1", check=False
    )


@pytest.fixture(scope="module")
def stack3(lab_cluster: LabCluster) -> Iterator[list[str]]:
    # It applies and deletes its own stack on three nodes: beside a running demo, skip.
    require_no_foreign_stack(lab_cluster, "this module deploys and removes its own stack")
    lab = lab_cluster
    started = time.monotonic()
    res = lab.lab.up(nodes_count=3)
    print(
        f"\n3 nodes Ready in {res.ready_seconds:.1f}s ({time.monotonic() - started:.1f}s with "
        f"images); RSS per extra node: {res.info['worker_rss_mib']} MiB",
        file=sys.stderr,
    )
    names: list[str] = res.info["nodes"]
    lab.kubectl("apply", "-f", str(DEMO / "stack"))
    try:
        for ds in DAEMONSETS:
            lab.kubectl(
                "-n", "openxpu", "rollout", "status", f"ds/{ds}", "--timeout=300s", timeout=320
            )
        wait_for(
            "every node to advertise its XPUs",
            lambda: allocatable(lab) == dict.fromkeys(names, PER_NODE),
            timeout=180,
        )
        yield names
    finally:
        delete_test_pods(lab)
        lab.kubectl(
            "delete",
            "-f",
            str(DEMO / "stack"),
            "--ignore-not-found",
            "--wait",
            check=False,
            timeout=240,
        )
        lab.lab.up(openxpu_image=False, nodes_count=1)


def test_daemonsets_run_one_pod_per_node(lab_cluster: LabCluster, stack3: list[str]) -> None:
    for ds in DAEMONSETS:
        pods = lab_cluster.kubectl_json(
            "get", "pods", "-n", "openxpu", "-l", f"app.kubernetes.io/name={ds}"
        )["items"]
        nodes = sorted(p["spec"]["nodeName"] for p in pods)  # type: ignore[attr-defined]
        assert nodes == sorted(stack3), (ds, nodes)


def test_full_node_pods_spread_and_a_fourth_waits(
    lab_cluster: LabCluster, stack3: list[str]
) -> None:
    lab = lab_cluster
    try:
        full = [xpu_pod(lab, "full", PER_NODE, ["python3", "-c", UUIDS]) for _ in stack3]
        for name in full:
            lab.wait_pod_phase(name, {"Running"}, timeout=180)
        placed = {pod(lab, n)["spec"]["nodeName"] for n in full}
        assert placed == set(stack3), "three 8-XPU pods on three different nodes"
        seen: list[str] = []
        for name in full:
            out = wait_for(
                f"{name} to print its devices",
                lambda n=name: lab.kubectl("logs", n).stdout.split(),
            )
            assert len(out) == PER_NODE and all(u.startswith("XPU-") for u in out), out
            seen.extend(out)
        assert len(set(seen)) == PER_NODE * len(stack3), "every node's XPUs have their own UUIDs"

        fourth = xpu_pod(lab, "fourth", PER_NODE, ["true"])
        message = wait_for("the scheduler's verdict", lambda: unschedulable_message(lab, fourth))
        assert f"0/{len(stack3)} nodes are available" in message, message
        assert f"Insufficient {RESOURCE}" in message, message
    finally:
        delete_test_pods(lab)


def test_a_nodes_run_openxpu_and_devices_are_its_own(
    lab_cluster: LabCluster, stack3: list[str]
) -> None:
    """A pod mounting its node's /run/openxpu and /dev sees that node's files (a marker
    written in each node's mount namespace) and the node's own /dev/xpuN, not another's."""
    lab = lab_cluster
    tag = uuid.uuid4().hex[:8]
    for node in stack3:
        _nsenter(lab, node, f"echo {node} > /run/openxpu/e2e-{tag}-{node}")
    outputs: dict[str, list[str]] = {}
    try:
        for node in stack3:
            name = f"look-{uuid.uuid4().hex[:6]}"
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "labels": {"openxpu-e2e": "multinode-stack"}},
                "spec": {
                    "nodeName": node,
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "c",
                            "image": lab.images["busybox"],
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", "ls /host/run/openxpu /host/dev"],
                            "volumeMounts": [
                                {"name": "run", "mountPath": "/host/run/openxpu"},
                                {"name": "dev", "mountPath": "/host/dev"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "run", "hostPath": {"path": "/run/openxpu"}},
                        {"name": "dev", "hostPath": {"path": "/dev"}},
                    ],
                },
            }
            lab.kubectl("apply", "-f", "-", input_text=json.dumps(body))
            assert lab.wait_pod_phase(name, {"Succeeded", "Failed"}) == "Succeeded"
            outputs[node] = lab.kubectl("logs", name).stdout.split()
    finally:
        delete_test_pods(lab)
        for node in stack3:
            _nsenter(lab, node, f"rm -f /run/openxpu/e2e-{tag}-{node}")
    for node, out in outputs.items():
        markers = [w for w in out if w.startswith(f"e2e-{tag}-")]
        assert markers == [f"e2e-{tag}-{node}"], (node, out)
        xpus = sorted(w for w in out if w.startswith("xpu") and w[3:].isdigit())
        assert xpus == sorted(f"xpu{i}" for i in range(PER_NODE)), (node, out)
    # The device nodes are each node's own: a worker's /dev is not the host's.
    inodes = {node: _nsenter(lab, node, "stat -c %i /dev/xpu0").strip() for node in stack3}
    devs = {node: _nsenter(lab, node, "stat -c %d /dev/xpu0").strip() for node in stack3}
    assert len({(devs[n], inodes[n]) for n in stack3}) == len(stack3), (devs, inodes)


def test_a_stopped_nodes_xpus_leave_the_schedulers_view(
    lab_cluster: LabCluster, stack3: list[str]
) -> None:
    lab = lab_cluster
    stopped = stack3[-1]
    lab.lab.node_stop("worker-2")
    waiting: list[str] = []
    try:
        wait_for(
            f"{stopped} NotReady",
            lambda: not _ready(lab).get(stopped, True),
            timeout=120,
        )
        full = [xpu_pod(lab, "full", PER_NODE, ["sleep", "600"]) for _ in stack3]
        waiting = wait_for(
            "one 8-XPU pod left without a node",
            lambda: [n for n in full if unschedulable_message(lab, n)],
        )
        assert len(waiting) == 1
        running = [n for n in full if n not in waiting]
        for name in running:
            lab.wait_pod_phase(name, {"Running"}, timeout=180)
        assert stopped not in {pod(lab, n)["spec"]["nodeName"] for n in running}
        message = unschedulable_message(lab, waiting[0])
        # The stopped node is tainted unreachable; the others are full.
        assert f"Insufficient {RESOURCE}" in message and "untolerated taint" in message, message
    finally:
        # A pending pod bound the moment the node is back may reach its kubelet before the
        # device plugin registered again and be rejected (UnexpectedAdmissionError, an
        # upstream kubelet race): the node is checked with a pod made once it advertises.
        lab.kubectl("delete", "pod", *waiting, "--grace-period=1", check=False)
        restarted = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        lab.lab.node_start("worker-2")
    try:
        # Back: its device plugin registers again, a new full-node pod lands there. Until
        # the restarted kubelet reports, the node's status is the one from before the stop
        # (8 XPUs): only a status the new kubelet wrote says its plugin is registered.
        wait_for(
            f"{stopped} Ready again and advertising {PER_NODE} XPUs",
            lambda: _advertising_since(lab, stopped, restarted) == PER_NODE,
            timeout=180,
        )
        # Even then the restarted kubelet may admit a pod while the plugin's devices are
        # still coming back and reject it (UnexpectedAdmissionError, never retried: an
        # upstream kubelet behaviour); a controller would make another pod, so do we.
        rejected: list[str] = []
        for _ in range(3):
            again = xpu_pod(lab, "again", PER_NODE, ["sleep", "600"])
            phase = wait_for(
                f"pod {again} Running or rejected", partial(_settled, lab, again), timeout=180
            )
            if phase["phase"] == "Running" or phase.get("reason") != "UnexpectedAdmissionError":
                break
            rejected.append(phase.get("message", ""))
        assert phase["phase"] == "Running", f"{again}: {phase}"
        assert pod(lab, again)["spec"]["nodeName"] == stopped
        print(f"\nrejected before a pod ran on {stopped}: {rejected}", file=sys.stderr)
    finally:
        delete_test_pods(lab)


def _settled(lab: LabCluster, name: str) -> dict[str, Any] | None:
    """The pod's status once it runs or failed, else None."""
    status: dict[str, Any] = pod(lab, name)["status"]
    return status if status.get("phase") in ("Running", "Failed") else None


def _advertising_since(lab: LabCluster, node: str, since: datetime.datetime) -> int | None:
    """The node's allocatable XPUs if its Ready condition turned True at `since` or later
    (a status the kubelet started after `since` wrote), else None."""
    status = lab.kubectl_json("get", "node", node)["status"]
    assert isinstance(status, dict)
    for c in status["conditions"]:
        if c["type"] == "Ready" and c["status"] == "True":
            turned = datetime.datetime.fromisoformat(c["lastTransitionTime"].replace("Z", "+00:00"))
            if turned >= since:
                return int(status.get("allocatable", {}).get(RESOURCE, "0"))
    return None


def _ready(lab: LabCluster) -> dict[str, bool]:
    out = lab.kubectl_json("get", "nodes", "-l", "!type")
    return {
        n["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
        )
        for n in out["items"]  # type: ignore[attr-defined]
    }
