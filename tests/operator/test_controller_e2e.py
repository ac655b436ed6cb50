"""The operator on the lab's real kubelet, as its own ServiceAccount under deploy/rbac.yaml:
a policy brings every operand Ready (allocatable openxpu.io/xpu, the workload validation
Succeeded, status Ready/Reconciled); disabling the exporter prunes it and stays Ready; a
missing exporter image is named in the status; deleting the policy leaves nothing (objects,
labels, host files: the lab's node is this machine)."""

from __future__ import annotations

import glob
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.conftest import (  # noqa: F401 (lab_cluster: a fixture)
    COLD_START_TIMEOUT,
    LabCluster,
    lab_cluster,
    require_no_foreign_stack,
    wait_for,
)
from operator_process import CRD_PATH, RBAC_PATH, RESYNC_SECONDS, running

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

NAMESPACE = "openxpu"
DEVICES = 4
SPEC: dict[str, Any] = {
    "emulation": {
        "defaultProfile": "lab",
        "profiles": {"lab": {"base": "x1-8", "devices": DEVICES}},
    },
    "exporter": {"dcgmCompat": True},
}
CLEANUP_TIMEOUT = 180
HOST_FILES = ("/opt/openxpu/driver", "/run/openxpu", "/var/run/cdi/openxpu.io-xpu.yaml")


def _operator_kubeconfig(lab: LabCluster, target: Path) -> Path:
    """The lab's cluster entry with the operator ServiceAccount's token."""
    token = lab.kubectl("create", "token", "openxpu-operator", "-n", NAMESPACE, "--duration=2h")
    config = yaml.safe_load(lab.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token.stdout.strip()}}]
    cluster = config["clusters"][0]["name"]
    config["contexts"] = [{"name": "operator", "context": {"cluster": cluster, "user": "operator"}}]
    config["current-context"] = "operator"
    target.write_text(yaml.safe_dump(config))
    return target


def _policy(lab: LabCluster) -> dict[str, Any]:
    out = lab.kubectl("get", "xcp", "e2e", "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def _ready(lab: LabCluster) -> dict[str, Any]:
    for c in (_policy(lab).get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return dict(c)
    return {}


@contextmanager
def operator_on(lab: LabCluster, tmp_path: Path, resync_seconds: float) -> Iterator[LabCluster]:
    """The CRD and RBAC installed and the operator running as its ServiceAccount; the
    policy `e2e` deleted (and everything with it) on the way out."""
    require_no_foreign_stack(lab)  # it deletes the CRD (and so every policy) at the end
    lab.kubectl("apply", "--server-side", "-f", str(CRD_PATH))
    lab.kubectl("wait", "--for=condition=Established", "crd/xpuclusterpolicies.openxpu.io")
    lab.kubectl("create", "namespace", NAMESPACE, check=False)
    lab.kubectl("apply", "-f", str(RBAC_PATH))
    kubeconfig = _operator_kubeconfig(lab, tmp_path / "operator.kubeconfig")
    # A real kubelet takes its time to stop pods (grace periods) and run the cleanup pod.
    with running(
        kubeconfig, tmp_path, cleanup_timeout=CLEANUP_TIMEOUT, resync_seconds=resync_seconds
    ):
        try:
            yield lab
        finally:
            lab.kubectl(
                "delete",
                "xcp",
                "e2e",
                "--ignore-not-found",
                f"--timeout={CLEANUP_TIMEOUT + 60}s",
                check=False,
                timeout=CLEANUP_TIMEOUT + 80,
            )
    lab.kubectl("delete", "-f", str(RBAC_PATH), "--ignore-not-found", check=False)
    lab.kubectl("delete", "-f", str(CRD_PATH), "--ignore-not-found", check=False)


def create_policy(lab: LabCluster) -> None:
    """The policy `e2e` for the lab's own node (a lab may hold other Node objects: another
    test's workers)."""
    body = {"apiVersion": "openxpu.io/v1", "kind": "XPUClusterPolicy"}
    spec = {**SPEC, "nodeSelector": {"kubernetes.io/hostname": lab.node_name}}
    body |= {"metadata": {"name": "e2e"}, "spec": spec}
    lab.kubectl("create", "-f", "-", input_text=json.dumps(body))


@pytest.fixture
def operator_on_lab(lab_cluster: LabCluster, tmp_path: Path) -> Iterator[LabCluster]:  # noqa: F811
    with operator_on(lab_cluster, tmp_path, RESYNC_SECONDS) as lab:
        yield lab


def test_policy_to_ready_and_back_to_nothing(operator_on_lab: LabCluster) -> None:
    lab = operator_on_lab
    started = time.monotonic()
    create_policy(lab)
    wait_for("Ready/Reconciled", lambda: _ready(lab).get("reason") == "Reconciled", 600)
    print(f"\npolicy applied -> Ready/Reconciled: {time.monotonic() - started:.1f}s")
    status = _policy(lab)["status"]
    assert status["state"] == "ready" and status["nodesReady"] == "1/1"
    assert status["operandsReady"] == "7/7"
    node = lab.kubectl_json("get", "node", lab.node_name)
    assert node["status"]["allocatable"]["openxpu.io/xpu"] == str(DEVICES)  # type: ignore[index]
    pods = lab.kubectl_json(
        "get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=workload-validation"
    )["items"]
    assert [p["status"]["phase"] for p in pods] == ["Succeeded"]  # type: ignore[index,union-attr]

    # Disable the exporter: its DaemonSet goes, the status stays Ready.
    lab.kubectl(
        "patch", "xcp", "e2e", "--type=merge", "-p", '{"spec":{"exporter":{"enabled":false}}}'
    )
    wait_for(
        "the exporter gone",
        lambda: (
            not lab.kubectl("get", "ds", "-n", NAMESPACE, "openxpu-exporter", check=False).stdout
        ),
    )
    wait_for("generation 2 Ready", lambda: _ready(lab).get("observedGeneration") == 2)
    assert _ready(lab)["reason"] == "Reconciled"

    # Break it on purpose: an exporter image that does not exist is named in the status.
    patch = {"spec": {"exporter": {"enabled": True, "image": "openxpu/missing:0"}}}
    lab.kubectl("patch", "xcp", "e2e", "--type=merge", "-p", json.dumps(patch))
    ready = wait_for(
        "ImagePullError in the status",
        lambda: (c := _ready(lab)) and "ImagePullError" in c.get("message", "") and c,
    )
    assert ready["reason"] == "OperandNotReady" and "openxpu/missing:0" in ready["message"]
    assert _policy(lab)["status"]["state"] == "notReady"

    # Delete: nothing left.
    assert glob.glob("/dev/xpu[0-9]*")
    uid = _policy(lab)["metadata"]["uid"]
    lab.kubectl(
        "delete", "xcp", "e2e", f"--timeout={CLEANUP_TIMEOUT + 60}s", timeout=CLEANUP_TIMEOUT + 80
    )
    events = json.loads(lab.kubectl("get", "events", "-n", "default", "-o", "json").stdout)
    reasons = [e["reason"] for e in events["items"] if e["involvedObject"].get("uid") == uid]
    assert "Reconciled" in reasons and "CleanupIncomplete" not in reasons
    left = lab.kubectl(
        "get",
        "ds,job,cm,svc,sa,pods",
        "-n",
        NAMESPACE,
        "-l",
        "app.kubernetes.io/managed-by=openxpu-operator",
        "-o",
        "name",
        check=False,
    ).stdout.strip()
    assert not left
    labels = lab.kubectl_json("get", "node", lab.node_name)["metadata"]["labels"]  # type: ignore[index]
    assert not [k for k in labels if k.startswith("openxpu.io/")]  # type: ignore[union-attr]
    assert not glob.glob("/dev/xpu[0-9]*")
    assert not [f for f in HOST_FILES if os.path.exists(f)]
