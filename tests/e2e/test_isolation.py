"""Isolation on the node (issue 14), on the lab's real kubelet with the demo stack: an XPU pod
in a namespace that enforces the restricted pod security standard, running as uid 1000 with
one XPU, reaches xpud only through its allocation's scope. It cannot inject or clear a
fault, cannot open a context on a device it was not given (raw HTTP on the socket, not only
our client), sees one device in `xpu-smi` and no other pod's processes; the driver pod,
on the admin socket, can do all of it. The workload runs `xpu-vectoradd` to Test PASSED.

A time-sliced pair each held to its own memory limit is proved in
tests/device_plugin/test_isolation.py against the real plugin and xpud (the lab's plugin
spreads replicas over devices, so two pods never share one there).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import test_openxpu_stack as demo
from e2e.conftest import LabCluster

pytestmark = pytest.mark.e2e

# The demo stack, applied once for this module and removed after it.
stack = demo.stack

RESTRICTED: dict[str, object] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# What a program in the pod can send by hand: admin routes, other devices, no memory limit.
PROBE = """
import json, os, sys, httpx
others = sys.argv[1].split(",")
w = httpx.Client(transport=httpx.HTTPTransport(uds="/run/openxpu/xpud.sock"), base_url="http://x")
def context(device):
    body = {"pid": os.getpid(), "name": "probe", "devices": [device]}
    return w.post("/v1/contexts", json=body).status_code
print(json.dumps({
    "inject_own": w.post("/v1/faults", json={"device": "0", "code": 79}).status_code,
    "inject_other": [w.post("/v1/faults", json={"device": u, "code": 79}).status_code
                     for u in others],
    "clear_own": w.delete("/v1/faults/0").status_code,
    "context_own": context("0"),
    "context_other_uuid": sorted({context(u) for u in others}),
    "context_other_index": sorted({context(str(i)) for i in range(1, 8)}),
    "admin_processes": w.get("/v1/processes").json(),
}))
"""


def pod(name: str, xpus: int, command: list[str]) -> str:
    return demo.pod_manifest(name, xpus, command, RESTRICTED)


@pytest.fixture(scope="module")
def namespace(stack: LabCluster) -> Iterator[str]:
    name = f"xpu-restricted-{uuid.uuid4().hex[:6]}"
    stack.kubectl("create", "namespace", name)
    try:
        stack.kubectl("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted")
        yield name
    finally:
        stack.kubectl("delete", "namespace", name, "--wait=false", check=False)


def driver_pod(lab: LabCluster) -> str:
    return lab.kubectl(
        "-n",
        "openxpu",
        "get",
        "pod",
        "-l",
        "app.kubernetes.io/name=openxpu-driver",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).stdout.strip()


def smi(lab: LabCluster, where: list[str], *args: str, check: bool = True) -> str:
    """`xpu-smi` run in a pod (`where`: kubectl's namespace and pod arguments)."""
    return lab.kubectl("exec", *where, "--", "xpu-smi", *args, check=check).stdout


def health(lab: LabCluster, driver: list[str]) -> list[str]:
    """Each device's health as xpud says it, read on the admin socket in the driver pod."""
    script = (
        "import json; from openxpu_runtime.client import XpudClient; "
        "print(json.dumps([d.health for d in XpudClient().inventory().devices]))"
    )
    out: list[str] = json.loads(lab.kubectl("exec", *driver, "--", "python3", "-c", script).stdout)
    return out


def test_the_openxpu_namespace_is_privileged_and_says_why(stack: LabCluster) -> None:
    metadata = stack.kubectl_json("get", "namespace", "openxpu")["metadata"]
    assert isinstance(metadata, dict)
    assert metadata["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert "driver" in metadata["annotations"]["openxpu.io/why-privileged"]


def test_a_restricted_pod_touches_only_its_own_device(stack: LabCluster, namespace: str) -> None:
    ns = ["-n", namespace]
    driver = ["-n", "openxpu", driver_pod(stack)]
    # A neighbour holding a context on its own device, so there is a process to hide.
    hold = (
        "from openxpu_runtime.xpu import XpuSession; import time; "
        "s = XpuSession(name='neighbour'); s.malloc(1 << 20); print('ready', flush=True); "
        "time.sleep(600)"
    )
    stack.kubectl(*ns, "apply", "-f", "-", input_text=pod("neighbour", 1, ["python3", "-c", hold]))
    stack.kubectl(*ns, "apply", "-f", "-", input_text=pod("probe", 1, ["sleep", "600"]))
    stack.wait_pod_phase("neighbour", {"Running"}, namespace=namespace)
    stack.wait_pod_phase("probe", {"Running"}, namespace=namespace)
    demo.wait_for(
        "the neighbour's context",
        lambda: "ready" in stack.kubectl(*ns, "logs", "neighbour", check=False).stdout,
        timeout=60,
    )
    all_uuids = smi(stack, driver, "--query-gpu=uuid", "--format=csv,noheader").split()
    assert len(all_uuids) == demo.PROFILE_COUNT
    mine = stack.kubectl(*ns, "exec", "probe", "--", "printenv", "XPU_VISIBLE_DEVICES").stdout
    mine = mine.strip()
    assert mine in all_uuids
    others = [u for u in all_uuids if u != mine]
    probe = [*ns, "probe"]

    # xpu-smi: one device, numbered 0, and no process of another pod.
    assert smi(stack, probe, "--query-gpu=index,uuid", "--format=csv,noheader").strip() == (
        f"0, {mine}"
    )
    apps = ["--query-compute-apps=process_name,gpu_uuid", "--format=csv,noheader"]
    assert "neighbour" not in smi(stack, probe, *apps)
    assert "neighbour" in smi(stack, driver, *apps), "the neighbour's process exists"
    # Faults: refused on its own device and on another, by xpu-smi...
    for index in ("0", "5"):
        refused = stack.kubectl(
            "exec", *probe, "--", "xpu-smi", "inject-fault", "-i", index, "--code", "79",
            check=False,
        )  # fmt: skip
        assert refused.returncode != 0, refused.stdout
    cleared = stack.kubectl("exec", *probe, "--", "xpu-smi", "clear-fault", "-i", "0", check=False)
    assert cleared.returncode != 0
    # ... and by hand.
    out = stack.kubectl("exec", *probe, "--", "python3", "-c", PROBE, ",".join(others)).stdout
    result = json.loads(out)
    assert result["inject_own"] == 403 and result["clear_own"] == 403
    assert set(result["inject_other"]) == {403}
    assert result["context_own"] == 201, "the probe can use its own device"
    assert result["context_other_uuid"] == [404] and result["context_other_index"] == [404]
    assert all(p["name"] == "probe" for p in result["admin_processes"])
    # Every device is still healthy: nothing the pod sent reached the admin API.
    assert set(health(stack, driver)) == {"Healthy"}

    # The driver pod, on the admin socket, may do what the workload may not.
    host_index = str(all_uuids.index(others[0]))
    smi(stack, driver, "inject-fault", "-i", host_index, "--code", "48", "--sticky")
    assert health(stack, driver)[int(host_index)] == "Unhealthy"
    smi(stack, driver, "clear-fault", "-i", host_index)
    assert set(health(stack, driver)) == {"Healthy"}


def test_vectoradd_passes_in_the_restricted_namespace(stack: LabCluster, namespace: str) -> None:
    job = Path(demo.DEMO / "workloads" / "vectoradd.yaml")
    stack.kubectl("-n", namespace, "apply", "-f", str(job))
    stack.kubectl(
        "-n",
        namespace,
        "wait",
        "--for=condition=complete",
        "job/xpu-vectoradd",
        "--timeout=150s",
        timeout=170,
    )
    assert "Test PASSED" in stack.kubectl("-n", namespace, "logs", "job/xpu-vectoradd").stdout
