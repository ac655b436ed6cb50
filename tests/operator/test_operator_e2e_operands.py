"""The rendered operands on the lab's real kubelet, applied in order the way the controller
will (node labels, server-side apply, wait for each operand): every DaemonSet gets Ready
behind its barrier init containers, the node advertises the custom profile's XPUs, the
workload validation Job succeeds; deleting the policy garbage-collects every operand
through the owner references."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import (  # noqa: F401 (lab_cluster: a fixture)
    COLD_START_TIMEOUT,
    LabCluster,
    lab_cluster,
    require_no_foreign_stack,
)

from openxpu_operator.policy import load_policy
from openxpu_operator.render import OPERANDS, RenderContext, deploy_label, render_operands

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

ROOT = Path(__file__).parents[2]
CRD = ROOT / "operator/deploy/crds/xpuclusterpolicies.openxpu.io.yaml"
# The hand-applied stack (`kubectl apply -f demo/stack/`) that a run of the stack's own e2e
# or `make demo` may have left in the lab: its driver would run beside ours.
DEMO_STACK = sorted(str(p) for p in (ROOT / "demo/stack").glob("[1-9]*.yaml"))
NAMESPACE = "openxpu"
DEVICES = 4
SPEC = {
    "emulation": {
        "defaultProfile": "lab",
        "profiles": {"lab": {"base": "x1-8", "devices": DEVICES}},
    },
    "exporter": {"dcgmCompat": True},
}


def wait_for(what: str, check: Callable[[], bool], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _node_labels(lab: LabCluster) -> dict[str, str]:
    meta = lab.kubectl_json("get", "node", lab.node_name)["metadata"]
    assert isinstance(meta, dict)
    labels: dict[str, str] = meta.get("labels", {})
    return labels


@pytest.fixture
def policy(lab_cluster: LabCluster) -> Iterator[dict[str, Any]]:  # noqa: F811
    lab = lab_cluster
    require_no_foreign_stack(lab)  # it removes demo/stack's operands and deletes the CRD
    demo = [a for f in DEMO_STACK for a in ("-f", f)]
    lab.kubectl("delete", *demo, "--ignore-not-found", "--wait", timeout=180)
    lab.kubectl("apply", "--server-side", "-f", str(CRD))
    lab.kubectl("wait", "--for=condition=Established", "crd/xpuclusterpolicies.openxpu.io")
    lab.kubectl("create", "namespace", NAMESPACE, check=False)
    body = {"apiVersion": "openxpu.io/v1", "kind": "XPUClusterPolicy"}
    body |= {"metadata": {"name": "e2e-render"}, "spec": SPEC}
    created = json.loads(
        lab.kubectl("create", "-o", "json", "-f", "-", input_text=json.dumps(body)).stdout
    )
    # What the controller will do: label the XPU node for every operand and its profile.
    node_labels = [f"{deploy_label(o.name)}=true" for o in OPERANDS]
    lab.kubectl(
        "label",
        "node",
        lab.node_name,
        "--overwrite",
        *node_labels,
        "openxpu.io/emulation.profile=lab",
    )
    try:
        yield created
    finally:
        lab.kubectl("delete", "xcp", "e2e-render", "--ignore-not-found", "--wait", check=False)
        wait_for(
            "the garbage collector to remove the operands",
            lambda: (
                not lab.kubectl(
                    "get",
                    "ds,job,cm,svc,sa",
                    "-n",
                    NAMESPACE,
                    "-l",
                    "openxpu.io/policy=e2e-render",
                    "-o",
                    "name",
                    check=False,
                ).stdout.strip()
            ),
        )
        removed = [f"{deploy_label(o.name)}-" for o in OPERANDS]
        lab.kubectl(
            "label", "node", lab.node_name, *removed, "openxpu.io/emulation.profile-", check=False
        )
        lab.kubectl("delete", "-f", str(CRD), "--ignore-not-found", "--wait", check=False)


def _ready(lab: LabCluster, ds: str) -> bool:
    status = lab.kubectl_json("get", "ds", ds, "-n", NAMESPACE).get("status", {})
    assert isinstance(status, dict)
    desired = status.get("desiredNumberScheduled", 0)
    return bool(desired) and status.get("numberReady") == desired


def test_operands_in_order_on_the_lab(lab_cluster: LabCluster, policy: dict[str, Any]) -> None:  # noqa: F811
    lab = lab_cluster
    operands = render_operands(
        load_policy(policy), RenderContext(namespace=NAMESPACE, nodes=(lab.node_name,))
    )
    for operand in operands:
        stream = yaml.safe_dump_all(operand.objects)
        lab.kubectl(
            "apply",
            "--server-side",
            "--field-manager=openxpu-operator",
            "-f",
            "-",
            input_text=stream,
        )
        for obj in operand.objects:
            name = obj["metadata"]["name"]
            if obj["kind"] == "DaemonSet":
                wait_for(f"{operand.name}: DaemonSet {name} Ready", lambda n=name: _ready(lab, n))
            elif obj["kind"] == "Job":
                lab.kubectl(
                    "wait",
                    "-n",
                    NAMESPACE,
                    "--for=condition=complete",
                    f"job/{name}",
                    "--timeout=240s",
                    timeout=260,
                )
    labels = _node_labels(lab)
    assert labels["openxpu.io/xpu.count"] == str(DEVICES)
    status = lab.kubectl_json("get", "node", lab.node_name)["status"]
    assert isinstance(status, dict)
    assert status["allocatable"]["openxpu.io/xpu"] == str(DEVICES)
    job = next(o for op in operands for o in op.objects if o["kind"] == "Job")
    log = lab.kubectl("logs", "-n", NAMESPACE, f"job/{job['metadata']['name']}").stdout
    assert log.strip(), "the validation workload printed nothing"

    # A restarted driver removes the node's driver-ready barrier; the validator puts it
    # back once the new driver answers, without being restarted itself.
    validator_pods = _pods(lab, "app.kubernetes.io/name=openxpu-operator-validator")
    drivers = "app.kubernetes.io/name=openxpu-driver"
    old_drivers = _pods(lab, drivers)
    lab.kubectl("delete", "pod", "-n", NAMESPACE, "-l", drivers, "--wait")
    wait_for(
        "a new driver pod, Ready",
        lambda: _pods(lab, drivers) not in ([], old_drivers) and _ready(lab, "openxpu-driver-lab"),
    )
    barrier = "/run/openxpu/validations/driver-ready"
    wait_for(
        "the validator to restore the barrier driver-ready",
        lambda: (
            lab.kubectl(
                "exec",
                "-n",
                NAMESPACE,
                "ds/openxpu-operator-validator",
                "--",
                "test",
                "-f",
                barrier,
                check=False,
            ).returncode
            == 0
        ),
        timeout=60,
    )
    wait_for("the validator Ready again", lambda: _ready(lab, "openxpu-operator-validator"))
    assert _pods(lab, "app.kubernetes.io/name=openxpu-operator-validator") == validator_pods


def _pods(lab: LabCluster, selector: str) -> list[str]:
    out = lab.kubectl("get", "pod", "-n", NAMESPACE, "-l", selector, "-o", "name").stdout
    return sorted(out.split())
