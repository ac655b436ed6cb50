"""The plugin with a real kubelet (the lab): the node's allocatable shows the devices, a pod
that requests one runs `xpu-vectoradd` on it through the mounted xpud socket, and a fault
takes the device out of allocatable until it is cleared.

A scratch xpud with real character device nodes serves the lab node's devices; the plugin
runs as its own process under a test-only resource name (`openxpu.io/xpu-e2e`) with its CDI
spec in a scratch dir, so it cannot collide with an OpenXPU install on the same lab. As after
any plugin's removal, the kubelet keeps that resource on the node with allocatable 0 until it
restarts (a status patch removing it is undone by the kubelet's next status update).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

pytestmark = pytest.mark.e2e

RESOURCE = "openxpu.io/xpu-e2e"
PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")

try:
    from e2e.conftest import LabCluster, lab_cluster  # noqa: F401 (a fixture)
except ImportError:  # the lab's e2e fixtures are not importable: nothing to run against
    pytest.skip("tests/e2e fixtures not available", allow_module_level=True)


@pytest.fixture(scope="module")
def node_xpus(lab_cluster: LabCluster) -> Iterator[XpudProcess]:
    root = Path(tempfile.mkdtemp(prefix="xde-", dir="/tmp"))
    xpud = XpudProcess(root, "--profile", "x1-2", node=lab_cluster.node_name)
    xpud.args[xpud.args.index("--device-nodes") + 1] = "char"
    xpud.start()
    log = (root / "plugin.log").open("ab")
    plugin = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openxpu_device_plugin.cli",
            "--resource-name",
            RESOURCE,
            "--plugin-dir",
            str(PLUGIN_DIR),
            "--xpud-socket",
            str(xpud.socket),
            "--cdi-spec-dir",
            str(root / "cdi"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        yield xpud
    finally:
        plugin.terminate()
        plugin.wait(10)
        log.close()
        xpud.stop()
        shutil.rmtree(root, ignore_errors=True)


def allocatable(lab: LabCluster) -> int:
    node = lab.kubectl_json("get", "node", lab.node_name)
    status = node["status"]
    assert isinstance(status, dict)
    return int(status.get("allocatable", {}).get(RESOURCE, "0"))


def wait_allocatable(lab: LabCluster, want: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while (got := allocatable(lab)) != want:
        assert time.monotonic() < deadline, f"{RESOURCE} allocatable is {got}, wanted {want}"
        time.sleep(0.5)


def test_pod_gets_a_device_and_computes(lab_cluster: LabCluster, node_xpus: XpudProcess) -> None:
    wait_allocatable(lab_cluster, 2)
    name = f"xpu-e2e-{uuid.uuid4().hex[:6]}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "vectoradd",
                    "image": lab_cluster.images["openxpu"],
                    "imagePullPolicy": "Never",
                    "command": ["sh", "-c", "env | grep ^XPU; ls /dev/xpu*; xpu-vectoradd"],
                    "resources": {"limits": {RESOURCE: "1"}},
                }
            ],
        },
    }
    lab_cluster.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    try:
        assert lab_cluster.wait_pod_phase(name, {"Succeeded", "Failed"}) == "Succeeded"
        logs = lab_cluster.kubectl("logs", name).stdout
        with node_xpus.client() as c:
            uuids = [d.uuid for d in c.inventory().devices]
        assert "Test PASSED" in logs
        visible = next(x for x in logs.splitlines() if x.startswith("XPU_VISIBLE_DEVICES="))
        assert visible.split("=", 1)[1] in uuids
    finally:
        lab_cluster.kubectl("delete", "pod", name, "--wait=false", check=False)


def test_fault_takes_the_device_out_of_allocatable(
    lab_cluster: LabCluster, node_xpus: XpudProcess
) -> None:
    wait_allocatable(lab_cluster, 2)
    with node_xpus.client() as c:
        c.inject_fault(api.FaultRequest(device="1", code=48))
        try:
            wait_allocatable(lab_cluster, 1)
        finally:
            c.clear_faults("1")
    wait_allocatable(lab_cluster, 2)
