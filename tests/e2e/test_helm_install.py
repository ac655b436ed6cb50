"""The chart on the lab's real kubelet, the way `make demo` and users install it: the operator
runs in the cluster from the local image; `helm install` → policy Ready, allocatable XPUs,
`helm test` passes; `helm upgrade --reuse-values` from the previous chart version (0.1.0,
packaged here with an older CRD) carries the CRD change through the pre-upgrade hook Job;
`helm uninstall` leaves nothing of ours (checked: below, `leftovers`).

A Ready release the lab already runs (a user's `make demo`) is reused by the `helm test`
check and left alone; the install/upgrade/uninstall test skips then (conftest.py).
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.conftest import (
    CHART,
    COLD_START_TIMEOUT,
    LAB_VALUES,
    STACK_NAMESPACE,
    LabCluster,
    Release,
    installed_stack,
    require_no_foreign_stack,
    wait_for,
    wait_ready,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

CRD = "xpuclusterpolicies.openxpu.io"
PREVIOUS_VERSION = "0.1.0"
# The field the previous chart's CRD lacks: an operator built for the current one needs it.
NEW_FIELD = "dcgmCompat"
DEVICES = 8  # demo/values-lab.yaml: profile x1-8
HOST_FILES = ("/dev/xpu[0-9]*", "/opt/openxpu/driver", "/run/openxpu", "/var/run/cdi/openxpu*")
# Kinds the chart or the operator create, looked up across namespaces after uninstall.
KINDS = (
    "daemonsets,deployments,jobs,pods,services,configmaps,serviceaccounts,roles,rolebindings",
    "clusterroles,clusterrolebindings",
    "validatingadmissionpolicies,validatingadmissionpolicybindings",
)
OURS = ("app.kubernetes.io/managed-by=openxpu-operator", "app.kubernetes.io/part-of=openxpu")


def previous_chart(tmp_path: Path) -> Path:
    """Chart 0.1.0: today's chart with a CRD that lacks spec.exporter.dcgmCompat, packaged."""
    src = tmp_path / "openxpu"
    shutil.copytree(CHART, src)
    meta = yaml.safe_load((src / "Chart.yaml").read_text())
    meta["version"] = PREVIOUS_VERSION
    (src / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    crd_file = src / "crds" / f"{CRD}.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"]["exporter"]["properties"][NEW_FIELD]
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return src


def policy(lab: LabCluster, name: str = "default") -> dict[str, Any]:
    return lab.kubectl_json("get", "xcp", name)


def ready_condition(lab: LabCluster, name: str = "default") -> dict[str, Any]:
    conditions = (policy(lab, name).get("status") or {}).get("conditions") or []
    return next((dict(c) for c in conditions if c["type"] == "Ready"), {})


def allocatable(lab: LabCluster) -> int:
    status = lab.kubectl_json("get", "node", lab.node_name)["status"]
    assert isinstance(status, dict)
    return int(status.get("allocatable", {}).get("openxpu.io/xpu", "0"))


def crd_exporter_fields(lab: LabCluster) -> set[str]:
    crd = lab.kubectl_json("get", "crd", CRD)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[index]
    return set(schema["properties"]["spec"]["properties"]["exporter"]["properties"])


def lease_holder(lab: LabCluster) -> str:
    lease = lab.kubectl_json("get", "lease", "openxpu-operator", "-n", STACK_NAMESPACE)
    spec = lease.get("spec")
    return str((spec or {}).get("holderIdentity") or "") if isinstance(spec, dict) else ""


def helm_test(lab: LabCluster, release: Release) -> str:
    out = lab.helm("test", release.name, "-n", release.namespace, "--timeout=5m", check=False)
    assert out.returncode == 0, f"helm test failed: {out.stdout}\n{out.stderr}"
    assert "Phase:          Succeeded" in out.stdout, out.stdout
    return out.stdout


def leftovers(lab: LabCluster) -> list[str]:
    """Everything of ours after `helm uninstall`: policies, objects the chart or the operator
    made (by label, every namespace), node labels openxpu.io/*, host files (the lab's node
    is this machine), objects in the release namespace other than the operator's Lease."""
    # installed_stack: policies (none when the CRD is gone too), operators, drivers.
    left = list(installed_stack(lab.kubectl))
    for kinds in KINDS:
        for selector in OURS:
            out = lab.kubectl("get", kinds, "-A", "-l", selector, "-o", "name")
            left += out.stdout.split()
    labels = lab.kubectl_json("get", "node", lab.node_name)["metadata"]["labels"]  # type: ignore[index]
    left += [f"node label {k}" for k in labels if k.startswith("openxpu.io/")]
    left += [f"host file {f}" for pattern in HOST_FILES for f in glob.glob(pattern)]
    in_namespace = lab.kubectl(
        "get", "all,configmaps,serviceaccounts,leases", "-n", STACK_NAMESPACE, "-o", "name",
    ).stdout.split()  # fmt: skip
    expected = {
        "configmap/kube-root-ca.crt",
        "serviceaccount/default",
        "lease.coordination.k8s.io/openxpu-operator",  # the operator's; goes with the namespace
    }
    left += [f"{STACK_NAMESPACE}: {o}" for o in in_namespace if o not in expected]
    return left


def _items(lab: LabCluster, *args: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = lab.kubectl_json("get", *args)["items"]  # type: ignore[assignment]
    return items


def test_helm_test_passes_on_a_ready_release(
    lab_cluster: LabCluster, openxpu_release: Release
) -> None:
    """Reuses a running `make demo` when there is one: helm test adds one pod, nothing else."""
    assert allocatable(lab_cluster) > 0
    helm_test(lab_cluster, openxpu_release)


def test_install_upgrade_from_the_previous_chart_and_uninstall(
    lab_cluster: LabCluster, tmp_path: Path
) -> None:
    lab = lab_cluster
    require_no_foreign_stack(lab)
    # Helm installs crds/ only when the CRD is absent: start from none, as a new cluster does.
    lab.kubectl("delete", "crd", CRD, "--ignore-not-found", "--wait", timeout=180)
    release = Release("openxpu", STACK_NAMESPACE, "default")
    old = previous_chart(tmp_path)
    try:
        lab.helm(
            "install", release.name, str(old), "-n", release.namespace, "--create-namespace",
            "-f", str(LAB_VALUES), "--wait", "--timeout=5m",
        )  # fmt: skip
        assert NEW_FIELD not in crd_exporter_fields(lab)
        # The operator (built for the new CRD) refuses to call the old one Ready.
        outdated = wait_for(
            "CRDOutdated on the 0.1.0 release",
            lambda: (c := ready_condition(lab)).get("reason") == "CRDOutdated" and c,
        )
        assert f"spec.exporter.{NEW_FIELD}" in outdated["message"]

        started = time.monotonic()
        lab.helm(
            "upgrade", release.name, str(CHART), "-n", release.namespace, "--reuse-values",
            "--wait", "--timeout=5m",
        )  # fmt: skip
        assert NEW_FIELD in crd_exporter_fields(lab), "the pre-upgrade hook applied the new CRD"
        wait_ready(lab, release.policy)
        print(f"\nhelm upgrade 0.1.0 -> current -> Ready: {time.monotonic() - started:.1f}s")
        history = json.loads(
            lab.helm("history", release.name, "-n", release.namespace, "-o", "json").stdout
        )
        assert [h["chart"] for h in history] == [
            f"openxpu-{PREVIOUS_VERSION}",
            f"openxpu-{yaml.safe_load((CHART / 'Chart.yaml').read_text())['version']}",
        ]
        # --reuse-values kept the lab's values: the local image, never pulled.
        spec = policy(lab)["spec"]
        assert spec["driver"]["imagePullPolicy"] == "Never"

        status = policy(lab)["status"]
        assert status["state"] == "ready"
        assert status["nodesReady"] == "1/1" and status["operandsReady"] == "7/7"
        wait_for("the node's XPUs", lambda: allocatable(lab) == DEVICES, timeout=120)
        validators = _items(
            lab, "pods", "-n", STACK_NAMESPACE, "-l",
            "app.kubernetes.io/component=workload-validation",
        )  # fmt: skip
        assert [p["status"]["phase"] for p in validators] == ["Succeeded"]
        (operator,) = _items(
            lab, "pods", "-n", STACK_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
        )
        container = operator["status"]["containerStatuses"][0]
        assert operator["status"]["phase"] == "Running" and container["ready"]
        assert container["restartCount"] == 0, "the liveness probe never failed"
        # The new pod takes the Lease over (at once when the old one released it on SIGTERM,
        # else when it expires); the Ready above may have been written by the old pod.
        wait_for(
            "the new operator pod to hold the Lease",
            lambda: lease_holder(lab) == operator["metadata"]["name"],
            timeout=90,
        )

        helm_test(lab, release)
    finally:
        lab.helm("uninstall", release.name, "-n", release.namespace, "--wait", "--timeout=5m")
    try:
        # The pre-delete hook waited for the operator's cleanup; pods may still be terminating.
        left = leftovers(lab)
        deadline = time.monotonic() + 120
        while left and time.monotonic() < deadline:
            time.sleep(2)
            left = leftovers(lab)
        assert not left, f"helm uninstall left: {left}"
        assert lab.kubectl("get", "crd", CRD, check=False).returncode == 0, "the CRD stays"
    finally:
        lab.kubectl("delete", "namespace", STACK_NAMESPACE, "--ignore-not-found", timeout=300)


def test_uninstall_deletes_the_crd_when_the_value_says_so(lab_cluster: LabCluster) -> None:
    lab = lab_cluster
    require_no_foreign_stack(lab)
    lab.helm(
        "install", "openxpu", str(CHART), "-n", STACK_NAMESPACE, "--create-namespace",
        "-f", str(LAB_VALUES), "--set=clusterPolicy.create=false",
        "--set=crds.deleteOnUninstall=true", "--wait", "--timeout=5m",
    )  # fmt: skip
    lab.helm("uninstall", "openxpu", "-n", STACK_NAMESPACE, "--wait", "--timeout=5m")
    assert lab.kubectl("get", "crd", CRD, check=False).returncode != 0, "the CRD is gone"
    lab.kubectl("delete", "namespace", STACK_NAMESPACE, "--wait", timeout=300)
