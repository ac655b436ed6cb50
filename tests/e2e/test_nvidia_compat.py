"""NVIDIA's tools in an XPU pod, unchanged, on the lab's real kubelet: the driver installed
libnvidia-ml.so.1 and nvidia-smi on the node, the device plugin mounted them where NVIDIA's
container toolkit puts them, and a pod requesting two `openxpu.io/xpu` sees exactly those
two devices through NVIDIA's own pynvml (nvidia-ml-py, unmodified) and through nvidia-smi.
The driver pod's nvidia-smi sees the whole node.

nvidia-ml-py is a test dependency, not one of the image's: its single pure-Python module goes
into the pod through a ConfigMap, byte for byte as PyPI ships it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pynvml
import pytest

from e2e.conftest import LabCluster
from e2e.test_openxpu_stack import PROFILE_COUNT, RESOURCE, stack  # noqa: F401 (a fixture)

pytestmark = pytest.mark.e2e

POD = "nvml-pod"
CONFIGMAP = "nvml-pod-files"
CHECK = Path(__file__).parent / "nvml_pod" / "check.py"
PRODUCT = "OpenXPU X1 64GB"  # demo/stack/10-driver.yaml installs profile x1-8
GIB = 1 << 30
SMI_QUERY = ["--query-gpu=index,name,memory.total", "--format=csv"]


def smi_rows(stdout: str) -> list[list[str]]:
    return [line.split(", ") for line in stdout.splitlines()]


@pytest.fixture(scope="module")
def nvml_pod(stack: LabCluster) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The report of a pod that requested two XPUs and ran check.py with pynvml."""
    stack.kubectl("delete", "configmap", CONFIGMAP, "--ignore-not-found")
    stack.kubectl(
        "create",
        "configmap",
        CONFIGMAP,
        f"--from-file=pynvml.py={pynvml.__file__}",
        f"--from-file=check.py={CHECK}",
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": POD},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": "openxpu/openxpu:dev",
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python3", "/nvml/check.py"],
                    "env": [{"name": "PYTHONPATH", "value": "/nvml"}],
                    "resources": {"limits": {RESOURCE: 2}},
                    "securityContext": {"runAsUser": 1000, "allowPrivilegeEscalation": False},
                    "volumeMounts": [{"name": "nvml", "mountPath": "/nvml", "readOnly": True}],
                }
            ],
            "volumes": [{"name": "nvml", "configMap": {"name": CONFIGMAP}}],
        },
    }
    stack.kubectl("apply", "-f", "-", input_text=json.dumps(pod))
    try:
        phase = stack.wait_pod_phase(POD, {"Succeeded", "Failed"}, timeout=180)
        logs = stack.kubectl("logs", POD).stdout
        assert phase == "Succeeded", logs
        yield json.loads(logs.strip().splitlines()[-1])
    finally:
        stack.kubectl("delete", "pod", POD, "--ignore-not-found", "--wait", check=False)
        stack.kubectl("delete", "configmap", CONFIGMAP, "--ignore-not-found", check=False)


def test_pynvml_in_the_pod_sees_exactly_its_two_xpus(nvml_pod: dict[str, Any]) -> None:
    devices = nvml_pod["devices"]
    # The library NVML's soname found is the one mounted at the toolkit's path.
    assert nvml_pod["library"] == ["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"]
    assert nvml_pod["driver_version"] == "0.1.0"
    assert [d["index"] for d in devices] == [0, 1]
    assert [d["name"] for d in devices] == [PRODUCT, PRODUCT]
    # The two devices the kubelet gave the container, in its order.
    assert [d["uuid"] for d in devices] == nvml_pod["visible"].split(",")
    assert all(d["memory_total"] == 64 * GIB for d in devices)
    # The pod's own work and memory, read back through NVML.
    assert devices[0]["utilization"] > 0
    assert devices[1]["memory_used"] >= GIB
    assert all(nvml_pod["pid"] in d["pids"] for d in devices)


def test_nvidia_smi_in_the_pod_lists_the_same_two(nvml_pod: dict[str, Any]) -> None:
    smi = nvml_pod["smi"]
    assert smi["rc"] == 0, smi["stderr"]
    if nvml_pod["scope"] is None:
        # NVML narrows by XPU_VISIBLE_DEVICES; xpu-smi shows what its socket serves.
        pytest.xfail("the plugin hands out the node's xpud socket, not a scope (issue 14)")
    header, *rows = smi_rows(smi["stdout"])
    assert header == ["index", "name", "uuid", "memory.total [MiB]"]
    assert rows == [
        [str(d["index"]), d["name"], d["uuid"], "65536 MiB"] for d in nvml_pod["devices"]
    ]


def test_nvidia_smi_in_the_driver_pod_lists_the_node(stack: LabCluster) -> None:  # noqa: F811
    driver = ("-n", "openxpu", "exec", "ds/openxpu-driver", "--")
    done = stack.kubectl(*driver, "nvidia-smi", *SMI_QUERY)
    header, *rows = smi_rows(done.stdout)
    assert header == ["index", "name", "memory.total [MiB]"]
    assert rows == [[str(i), PRODUCT, "65536 MiB"] for i in range(PROFILE_COUNT)]
