"""install.yml / validate.yml / uninstall.yml against a real kube-apiserver (apiserver-only,
no nodes), the "existing kubeconfig" cluster path, with the real chart and helm binary.

No node means no operator pod and no hook Job: install is checked by the objects the
chart creates, validate must fail naming the policy that is not Ready, and uninstall runs
without hooks (the pre-delete hook's Job could never run here; tests/helm proves the hook
itself). The namespace controller is absent too, so the namespace would stay Terminating:
its deletion is left to the lab's e2e run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from openxpu_lab import apiserver_only, gobuild, paths
from openxpu_lab.envtest import ApiServer
from openxpu_lab.gobuild import kubectl_path
from openxpu_lab.progress import Progress

from .support import localhost_inventory, playbook

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
        reason="needs etcd (root installs it with apt)",
    ),
]

CRD = "xpuclusterpolicies.openxpu.io"


def helm_binary() -> Path:
    """The lab's helm, built from its Go module at the matrix's version (cached)."""
    gobuild.ensure(gobuild.helm_tool(), Progress(quiet=True))
    return paths.helm_bin_dir() / "helm"


@pytest.fixture(scope="module")
def api() -> Iterator[ApiServer]:
    with apiserver_only() as server:
        yield server


def kubectl(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(api.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def get(api: ApiServer, *args: str) -> dict[str, Any] | None:
    out = kubectl(api, "get", *args, "-o", "json")
    if out.returncode != 0:
        assert "NotFound" in out.stderr or "doesn't have a resource type" in out.stderr, out.stderr
        return None
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def helm(api: ApiServer, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(helm_binary()), "--kubeconfig", str(api.kubeconfig), *args]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    return out


def cluster_inventory(api: ApiServer, path: Path, **variables: object) -> Path:
    """This API server as an existing cluster; no node runs hooks, and the namespace
    controller is absent (a deleted namespace would stay Terminating)."""
    return localhost_inventory(
        path,
        openxpu_cluster_kubeconfig=str(api.kubeconfig),
        openxpu_stack_helm_binary=str(helm_binary()),
        openxpu_validate_poll_interval=1,
        openxpu_uninstall_helm_binary=str(helm_binary()),
        openxpu_uninstall_hooks=False,
        openxpu_uninstall_delete_namespace=False,
        **variables,
    )


def foreign_chart(path: Path) -> Path:
    """Someone else's release: uninstall must leave it alone (CNS's removes every release)."""
    (path / "templates").mkdir(parents=True)
    (path / "Chart.yaml").write_text("apiVersion: v2\nname: foreign\nversion: 1.0.0\n")
    (path / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: foreign\n"
        "data:\n  owner: someone-else\n"
    )
    return path


def test_install_validate_uninstall_on_an_existing_cluster(api: ApiServer, tmp_path: Path) -> None:
    helm(api, "install", "foreign", str(foreign_chart(tmp_path / "foreign")), "-n", "default")
    inv = cluster_inventory(
        api,
        tmp_path / "inventory.yml",
        openxpu_cluster_mode="kubeconfig",
        openxpu_stack_values={"exporter": {"dcgmCompat": True}},
        openxpu_validate_timeout=4,
    )
    home = tmp_path / "ansible-home"

    out = playbook("install.yml", inv, home=home)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    crd = get(api, "crd", CRD)
    assert crd is not None
    assert get(api, "deployment", "openxpu-operator", "-n", "openxpu") is not None
    policy = get(api, "xpuclusterpolicy", "default")
    assert policy is not None and policy["spec"]["exporter"]["dcgmCompat"] is True
    assert policy["spec"]["driver"]["version"] == "0.1.0"  # the matrix's driver
    ns = get(api, "namespace", "openxpu")
    assert ns is not None
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"

    # Again: nothing changes.
    again = playbook("install.yml", inv, home=home)
    assert again.returncode == 0, again.stdout[-6000:]
    assert "changed=0" in again.stdout, again.stdout[-3000:]

    # No operator runs here: validation fails on the policy, saying why, in a JUnit report.
    bad = playbook("validate.yml", inv, home=home)
    assert bad.returncode == 2, bad.stdout[-6000:]
    assert (
        "XPUClusterPolicy default is not Ready after 4s: it has no status: no operator has "
        "reconciled it (is the openxpu-operator Deployment in openxpu running?)"
    ) in bad.stdout, bad.stdout[-6000:]
    reports = list((home / "junit").glob("validate-*.xml"))
    assert len(reports) == 1
    # ansible-core 2.19's junit callback files a failed task as an <error> with its message.
    suites = ElementTree.parse(reports[0]).getroot()
    failed = [
        (case.get("name", ""), problem.get("message", ""))
        for case in suites.iter("testcase")
        for problem in [*case.iter("error"), *case.iter("failure")]
    ]
    assert len(failed) == 1, failed
    name, message = failed[0]
    assert "The XPUClusterPolicy is Ready, default" in name
    assert "XPUClusterPolicy default is not Ready after 4s" in message, message

    gone = playbook("uninstall.yml", inv, home=home)
    assert gone.returncode == 0, gone.stdout[-6000:] + gone.stderr[-3000:]
    for args in (
        ("crd", CRD),
        ("deployment", "openxpu-operator", "-n", "openxpu"),
        ("clusterrole", "openxpu-operator"),
        ("clusterrolebinding", "openxpu-operator"),
        ("role", "openxpu-operator-events", "-n", "default"),
    ):
        assert get(api, *args) is None, f"{args} survived uninstall"
    # Someone else's release and its objects are untouched.
    releases = json.loads(helm(api, "list", "-A", "-o", "json").stdout)
    assert [r["name"] for r in releases] == ["foreign"]
    assert get(api, "configmap", "foreign", "-n", "default") is not None


def test_upgrade_waits_on_the_operator_then_on_every_node(api: ApiServer, tmp_path: Path) -> None:
    """No operator runs here: the test plays its part on the policy's status and the node's
    labels, and upgrade.yml must wait for each and say exactly which is missing."""
    inv = cluster_inventory(
        api,
        tmp_path / "inventory.yml",
        # The CRD upgrade hook is a Job: no node runs it here (the lab e2e runs it).
        openxpu_stack_values={"crds": {"upgrade": False}},
        openxpu_upgrade_driver_version="0.1.1",
        openxpu_upgrade_timeout=3,
        openxpu_upgrade_poll_interval=1,
        openxpu_validate_timeout=2,
    )
    home = tmp_path / "ansible-home"
    node = "xpu-node-1"
    out = playbook("install.yml", inv, home=home)
    assert out.returncode == 0, out.stdout[-6000:]
    created = subprocess.run(
        [str(kubectl_path()), "--kubeconfig", str(api.kubeconfig), "create", "-f", "-"],
        input=json.dumps({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": node, "labels": {
                "openxpu.io/xpu.present": "true", "openxpu.io/driver.version": "0.1.0"}},
        }),
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    try:
        # 1. Nobody reconciles the new generation.
        out = playbook("upgrade.yml", inv, home=home)
        assert out.returncode == 2, out.stdout[-6000:]
        assert (
            "XPUClusterPolicy default with driver 0.1.1 was not reconciled after 3s "
            "(spec.driver.version 0.1.1, generation 2, observed never)"
        ) in out.stdout, out.stdout[-6000:]

        # 2. The "operator" reconciled it, but no node is upgraded: named, with why.
        driver = {"name": "driver", "desired": 1, "ready": 1, "updated": 0}
        status = {"observedGeneration": 2, "state": "ready", "operands": [driver]}
        patched = kubectl(
            api, "patch", "xpuclusterpolicy", "default", "--subresource=status",
            "--type=merge", "-p", json.dumps({"status": status}),
        )  # fmt: skip
        assert patched.returncode == 0, patched.stderr
        out = playbook("upgrade.yml", inv, home=home)
        assert out.returncode == 2, out.stdout[-6000:]
        text = " ".join(out.stdout.split())
        assert (
            f"driver upgrade to 0.1.1 not done after 3s on node(s): {node} (no upgrade state, "
            "driver 0.1.0). No XPU node carries openxpu.io/driver-upgrade-state: the operator "
            "has not started a driver upgrade (its upgrade controller is not running). The "
            "policy's driver operand has 0/1 pods on the new template (state ready)"
        ) in text, text[-6000:]

        # 3. The node walks to upgrade-done with the new driver: the wait passes, and
        # validation runs next (and fails here: no exporter, no device plugin).
        labelled = kubectl(
            api, "label", "node", node, "--overwrite",
            "openxpu.io/driver-upgrade-state=upgrade-done", "openxpu.io/driver.version=0.1.1",
        )  # fmt: skip
        assert labelled.returncode == 0, labelled.stderr
        out = playbook("upgrade.yml", inv, home=home)
        passed = (
            r"TASK \[openxpu_upgrade : Every XPU node is upgrade-done with the new driver\] \**\n"
        )
        passed += r"ok:"
        assert re.search(passed, out.stdout), out.stdout[-6000:]
        assert re.findall(r"TASK \[([^\]]+)\]", out.stdout)[-1].startswith("openxpu_validate")
    finally:
        kubectl(api, "delete", "node", node, "--wait")
        gone = playbook("uninstall.yml", inv, home=home)
        assert gone.returncode == 0, gone.stdout[-6000:]
