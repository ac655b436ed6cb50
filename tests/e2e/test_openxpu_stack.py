"""The OpenXPU stack as users run it, on the lab's real kubelet: the demo's DaemonSets from
the locally built image (driver, device plugin, feature discovery, exporter), then xpu pods.

Proves with the real kubelet and scheduler what the device plugin's integration tests prove
with a protocol peer: capacity is advertised, a pod gets a device it can use, a request
beyond capacity stays Pending with the scheduler's reason, a kubelet restart is followed
by re-registration, and the exporter attributes a device to the pod holding it.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from e2e.conftest import LabCluster, require_no_foreign_stack
from openxpu_device_plugin.kubeletapi import pb
from openxpu_device_plugin.resources import CDI_KIND

pytestmark = pytest.mark.e2e

DEMO = Path(__file__).resolve().parents[2] / "demo"
DAEMONSETS = (
    "openxpu-driver",
    "openxpu-device-plugin",
    "openxpu-feature-discovery",
    "openxpu-exporter",
)
RESOURCE = "openxpu.io/xpu"
PROFILE_COUNT = 8  # demo/stack/10-driver.yaml installs profile x1-8


def allocatable(lab: LabCluster) -> int:
    status = lab.kubectl_json("get", "node", lab.node_name)["status"]
    assert isinstance(status, dict)
    return int(status.get("allocatable", {}).get(RESOURCE, "0"))


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


UID_1000 = {"runAsUser": 1000, "allowPrivilegeEscalation": False}


def pod_manifest(
    name: str, xpus: int, command: list[str], security_context: dict[str, object] = UID_1000
) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "openxpu/openxpu:dev",
                        "imagePullPolicy": "IfNotPresent",
                        "command": command,
                        "resources": {"limits": {RESOURCE: xpus}},
                        "securityContext": security_context,
                    }
                ],
            },
        }
    )


@pytest.fixture(scope="module")
def stack(lab_cluster: LabCluster) -> Iterator[LabCluster]:
    lab = lab_cluster
    require_no_foreign_stack(lab)  # it applies demo/stack and deletes it at the end
    lab.kubectl("apply", "-f", str(DEMO / "stack"))
    try:
        for ds in DAEMONSETS:
            lab.kubectl(
                "-n", "openxpu", "rollout", "status", f"ds/{ds}", "--timeout=180s", timeout=200
            )
        wait_for("the node to advertise its XPUs", lambda: allocatable(lab) == PROFILE_COUNT)
        yield lab
    finally:
        lab.kubectl(
            "delete",
            "-f",
            str(DEMO / "workloads"),
            "--ignore-not-found",
            "--wait",
            check=False,
            timeout=120,
        )
        lab.kubectl("delete", "pod", "xpu-env", "xpu-too-many", "--ignore-not-found", check=False)
        lab.kubectl(
            "delete",
            "-f",
            str(DEMO / "stack"),
            "--ignore-not-found",
            "--wait",
            check=False,
            timeout=180,
        )


def _node_labels(lab: LabCluster) -> dict[str, str]:
    metadata = lab.kubectl_json("get", "node", lab.node_name)["metadata"]
    assert isinstance(metadata, dict)
    labels: dict[str, str] = metadata["labels"]
    return labels


def test_feature_discovery_labels_the_node(stack: LabCluster) -> None:
    # Feature discovery and the plugin both wait for xpud; the labels may land just after the
    # XPUs are allocatable (on a node an uninstall has cleaned, no older labels stand in).
    wait_for(
        "feature discovery's labels",
        lambda: "openxpu.io/xpu.count" in _node_labels(stack),
        timeout=90,
    )
    labels = _node_labels(stack)
    assert labels["openxpu.io/xpu.count"] == str(PROFILE_COUNT)
    assert labels["openxpu.io/xpu.product"] == "OpenXPU-X1-64GB"
    assert labels["openxpu.io/xpu.memory"] == "65536"
    assert labels["openxpu.io/driver.version"] == "0.1.0"


def test_a_pod_gets_the_device_it_requested(stack: LabCluster) -> None:
    script = (
        "import os; from openxpu_runtime.xpu import XpuSession; "
        "s = XpuSession(); print(os.environ['XPU_VISIBLE_DEVICES'], "
        "[d.uuid for d in s.devices]); s.close()"
    )
    stack.kubectl(
        "apply", "-f", "-", input_text=pod_manifest("xpu-env", 1, ["python3", "-c", script])
    )
    stack.wait_pod_phase("xpu-env", {"Succeeded"}, timeout=120)
    visible, seen = stack.kubectl("logs", "xpu-env").stdout.strip().split(" ", 1)
    assert visible.startswith("XPU-") and "," not in visible
    assert seen == f"['{visible}']", "the container reaches xpud and sees exactly its device"


def test_vectoradd_job_passes(stack: LabCluster) -> None:
    stack.kubectl("delete", "job", "xpu-vectoradd", "--ignore-not-found", "--wait")
    stack.kubectl("apply", "-f", str(DEMO / "workloads" / "vectoradd.yaml"))
    stack.kubectl(
        "wait", "--for=condition=complete", "job/xpu-vectoradd", "--timeout=150s", timeout=170
    )
    assert "Test PASSED" in stack.kubectl("logs", "job/xpu-vectoradd").stdout


def test_more_xpus_than_exist_stays_pending_with_the_reason(stack: LabCluster) -> None:
    stack.kubectl(
        "apply", "-f", "-", input_text=pod_manifest("xpu-too-many", PROFILE_COUNT + 1, ["true"])
    )
    message = ""

    def unschedulable() -> bool:
        nonlocal message
        pod = stack.kubectl_json("get", "pod", "xpu-too-many")
        status = pod["status"]
        assert isinstance(status, dict) and status["phase"] == "Pending"
        conditions = status.get("conditions", [])
        message = next(
            (c.get("message", "") for c in conditions if c.get("reason") == "Unschedulable"), ""
        )
        return bool(message)

    wait_for("the scheduler's verdict", unschedulable, timeout=60)
    assert f"Insufficient {RESOURCE}" in message


def test_exporter_attributes_the_device_to_the_pod(stack: LabCluster) -> None:
    stack.kubectl("apply", "-f", str(DEMO / "workloads" / "burn.yaml"))
    stack.kubectl("rollout", "status", "deploy/xpu-burn", "--timeout=120s", timeout=140)
    ip = stack.kubectl(
        "-n",
        "openxpu",
        "get",
        "pod",
        "-l",
        "app.kubernetes.io/name=openxpu-exporter",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ).stdout.strip()
    lines: list[str] = []

    def attributed() -> bool:
        nonlocal lines
        with urllib.request.urlopen(f"http://{ip}:9400/metrics", timeout=5) as r:
            text = r.read().decode()
        lines = [
            ln
            for ln in text.splitlines()
            if ln.startswith("openxpu_utilization_ratio{") and 'pod="xpu-burn' in ln
        ]
        return len(lines) == 2 and all(float(ln.rsplit(" ", 1)[1]) > 0.3 for ln in lines)

    wait_for("two busy devices attributed to the xpu-burn pod", attributed, timeout=90)
    assert all('namespace="default"' in ln and 'container="burn"' in ln for ln in lines)


def test_kubelet_restart_is_followed_by_re_registration(stack: LabCluster) -> None:
    stack.lab.restart("kubelet")
    # The restarted kubelet forgets every plugin; capacity is back only if ours registers.
    wait_for(
        "the plugin to re-register with the new kubelet",
        lambda: allocatable(stack) == PROFILE_COUNT,
        timeout=120,
    )
    stack.kubectl("delete", "pod", "xpu-env", "--ignore-not-found", "--wait")
    test_a_pod_gets_the_device_it_requested(stack)


CDI_SPEC = Path("/var/run/cdi/openxpu.io-xpu.yaml")
KUBELET_CHECKPOINT = Path("/var/lib/kubelet/device-plugins/kubelet_internal_checkpoint")


def allocate_response(pod_uid: str) -> pb.ContainerAllocateResponse:
    """What our plugin's Allocate answered for a pod, as the kubelet recorded it."""
    entries = json.loads(KUBELET_CHECKPOINT.read_text())["Data"]["PodDeviceEntries"]
    (entry,) = [e for e in entries if e["PodUID"] == pod_uid and e["ResourceName"] == RESOURCE]
    return pb.ContainerAllocateResponse.FromString(base64.b64decode(entry["AllocResp"]))


def test_cdi_strategy_hands_the_device_through_containerd(stack: LabCluster) -> None:
    """With `deviceListStrategy: cdi` Allocate returns CDI names and the scope's mount: the
    device node and its env reach the container only if containerd applies the spec."""
    CDI_SPEC.unlink(missing_ok=True)
    ds = "ds/openxpu-device-plugin"
    stack.kubectl("-n", "openxpu", "set", "env", ds, "DEVICE_LIST_STRATEGY=cdi")
    stack.kubectl("-n", "openxpu", "rollout", "status", ds, "--timeout=120s", timeout=140)

    def registered() -> bool:
        # The new pod's own log: the old one may still be terminating, with the same line.
        pods = stack.kubectl_json(
            "-n", "openxpu", "get", "pod", "-l", "app.kubernetes.io/name=openxpu-device-plugin"
        )["items"]
        assert isinstance(pods, list)
        cdi_pods = [
            p["metadata"]["name"]
            for p in pods
            if "deletionTimestamp" not in p["metadata"]
            and {"name": "DEVICE_LIST_STRATEGY", "value": "cdi"}
            in p["spec"]["containers"][0].get("env", [])
        ]
        return (
            len(cdi_pods) == 1
            and f"registered {RESOURCE}"
            in stack.kubectl("-n", "openxpu", "logs", cdi_pods[0], check=False).stdout
        )

    wait_for("the CDI-mode plugin to register", registered, timeout=60)
    assert CDI_SPEC.is_file(), "the plugin writes the CDI spec on the host"
    script = (
        "import glob, os, stat; from openxpu_runtime.xpu import XpuSession; "
        "nodes = sorted(glob.glob('/dev/xpu[0-9]*')); "
        "assert all(stat.S_ISCHR(os.stat(n).st_mode) for n in nodes), nodes; "
        "s = XpuSession(); "
        "print(os.environ['XPU_VISIBLE_DEVICES'], os.environ['XPUD_SOCKET'], "
        "[d.uuid for d in s.devices], s.devices[0].device_path, ','.join(nodes)); s.close()"
    )
    stack.kubectl("delete", "pod", "xpu-cdi", "--ignore-not-found", "--wait")
    try:
        stack.kubectl(
            "apply", "-f", "-", input_text=pod_manifest("xpu-cdi", 1, ["python3", "-c", script])
        )
        stack.wait_pod_phase("xpu-cdi", {"Succeeded"}, timeout=120)
        visible, socket, seen, node, nodes = stack.kubectl("logs", "xpu-cdi").stdout.split()
        # The kubelet got CDI names and the scope's mount only: nothing else could have given
        # the container its device node.
        uid = stack.kubectl("get", "pod", "xpu-cdi", "-o", "jsonpath={.metadata.uid}").stdout
        answer = allocate_response(uid)
        assert [d.name for d in answer.cdi_devices] == [f"{CDI_KIND}={visible}"]
        assert not answer.devices
        ((mount_path, host_path),) = [(m.container_path, m.host_path) for m in answer.mounts]
        assert mount_path == "/run/openxpu" and host_path.startswith("/run/openxpu/scopes/")
        assert f"name: {visible}" in CDI_SPEC.read_text()
        assert seen == f"['{visible}']"
        assert socket == "/run/openxpu/xpud.sock"
        assert nodes == node, "exactly the allocated device node, from the spec"
    finally:
        stack.kubectl("delete", "pod", "xpu-cdi", "--ignore-not-found", check=False)
        stack.kubectl("-n", "openxpu", "set", "env", ds, "DEVICE_LIST_STRATEGY-", check=False)
        stack.kubectl("-n", "openxpu", "rollout", "status", ds, "--timeout=120s", check=False)
