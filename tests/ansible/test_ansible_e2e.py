"""The Ansible playbooks on the lab, one host, local connection: install → validate passes →
install again changes nothing → a fault on one device fails validate naming the node and the
device → clear → upgrade the driver → validate → uninstall → validate reports the stack
absent, and nothing of ours is left on the cluster or the host (checked again here, outside
Ansible). Prints the install → validate time (docs/performance.md).

The lab is this machine: `openxpu_nodes` is localhost, so install.yml also runs the host
prerequisites role here (its sysctl file is removed afterwards when it was not there before).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml
from e2e.conftest import (
    COLD_START_TIMEOUT,
    LAB_VALUES,
    STACK_NAMESPACE,
    LabCluster,
    lab_cluster,  # noqa: F401  (the session's lab, the e2e tests' fixture)
    require_no_foreign_stack,
    wait_for,
)
from e2e.test_helm_install import CRD, leftovers

from openxpu_lab import gobuild, paths
from openxpu_lab.progress import Progress

from .support import BIN, playbook

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(COLD_START_TIMEOUT)]

SYSCTL_FILE = Path("/etc/sysctl.d/90-openxpu.conf")
FAULTY_DEVICE = 3
XID_DOUBLE_BIT_ECC = 48
NEW_DRIVER = "0.1.1"


def inventory(lab: LabCluster, path: Path) -> Path:
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    gobuild.ensure(gobuild.helm_tool(), Progress(quiet=True))
    helm = str(paths.helm_bin_dir() / "helm")
    variables = {
        "openxpu_cluster_mode": "lab",
        "openxpu_cluster_lab_command": str(BIN / "openxpu-lab"),
        "openxpu_cluster_lab_state_dir": str(lab.lab.layout.root),
        "openxpu_stack_helm_binary": helm,
        "openxpu_stack_values": yaml.safe_load(LAB_VALUES.read_text()),
        "openxpu_validate_timeout": 300,
        "openxpu_validate_poll_interval": 2,
        "openxpu_upgrade_driver_version": NEW_DRIVER,
        "openxpu_upgrade_timeout": 240,
        "openxpu_upgrade_poll_interval": 3,
        "openxpu_uninstall_helm_binary": helm,
    }
    inv = {
        "all": {
            "children": {
                "openxpu_control": {"hosts": {"localhost": None}},
                "openxpu_nodes": {"hosts": {"localhost": None}},
            },
            "hosts": {"localhost": host},
            "vars": variables,
        }
    }
    path.write_text(yaml.safe_dump(inv))
    return path


def recap_changed(stdout: str) -> int:
    found = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", stdout)
    assert found, stdout[-3000:]
    return int(found.group(1))


def junit_failures(report_dir: Path) -> list[tuple[str, str]]:
    """(test case, message) of each failed task in the newest validate report."""
    newest = max(report_dir.glob("validate-*.xml"), key=lambda p: p.stat().st_mtime)
    root = ElementTree.parse(newest).getroot()
    return [
        (case.get("name", ""), problem.get("message", ""))
        for case in root.iter("testcase")
        for problem in [*case.iter("error"), *case.iter("failure")]
    ]


def driver_pod(lab: LabCluster) -> str:
    out = lab.kubectl(
        "get", "pod", "-n", STACK_NAMESPACE, "-l", "app.kubernetes.io/name=openxpu-driver",
        "-o", "jsonpath={.items[0].metadata.name}",
    )  # fmt: skip
    return out.stdout.strip()


def xpu_smi(lab: LabCluster, *args: str) -> None:
    lab.kubectl(
        "exec", "-n", STACK_NAMESPACE, driver_pod(lab), "-c", "driver", "--", "xpu-smi", *args
    )


@pytest.fixture
def sysctl_file_restored() -> Iterator[None]:
    existed = SYSCTL_FILE.exists()
    yield
    if not existed:
        SYSCTL_FILE.unlink(missing_ok=True)


def test_install_validate_fault_upgrade_uninstall(
    lab_cluster: LabCluster,  # noqa: F811
    tmp_path: Path,
    sysctl_file_restored: None,
) -> None:
    lab = lab_cluster
    require_no_foreign_stack(lab)
    inv = inventory(lab, tmp_path / "inventory.yml")
    home = tmp_path / "ansible-home"

    def run(name: str, expect: int) -> str:
        out = playbook(name, inv, home=home, timeout=900)
        text = out.stdout + out.stderr
        assert out.returncode == expect, f"{name}: rc {out.returncode}\n{text[-8000:]}"
        return out.stdout

    uninstalled = fault_injected = False
    try:
        started = time.monotonic()
        run("install.yml", 0)
        installed = time.monotonic() - started
        run("validate.yml", 0)
        print(
            f"\nansible install.yml -> validate.yml passed (lab up, images cached, 1 node, "
            f"x1-8): {time.monotonic() - started:.1f}s (install {installed:.1f}s)"
        )
        assert junit_failures(home / "junit") == []

        assert recap_changed(run("install.yml", 0)) == 0, "a second install changed something"

        fault_injected = True
        xpu_smi(lab, "inject-fault", "-i", str(FAULTY_DEVICE), "--code", str(XID_DOUBLE_BIT_ECC))
        failed = run("validate.yml", 2)
        named = f"unhealthy XPU device(s): {lab.node_name} xpu {FAULTY_DEVICE} (XPU-"
        assert named in failed, failed[-6000:]
        ((case, message),) = junit_failures(home / "junit")
        assert "Every XPU device is healthy" in case and named in message
        xpu_smi(lab, "clear-fault", "-i", str(FAULTY_DEVICE))
        fault_injected = False

        upgrade = playbook("upgrade.yml", inv, home=home, timeout=900)
        assert upgrade.returncode == 0, upgrade.stdout[-8000:]
        labels = lab.kubectl_json("get", "node", lab.node_name)["metadata"]["labels"]  # type: ignore[index]
        assert labels["openxpu.io/driver-upgrade-state"] == "upgrade-done"
        assert labels["openxpu.io/driver.version"] == NEW_DRIVER  # upgrade.yml validated again

        run("uninstall.yml", 0)
        uninstalled = True
        absent = run("validate.yml", 2)
        assert "CRD xpuclusterpolicies.openxpu.io is missing or not Established" in absent
        # Outside Ansible: nothing of ours on the cluster or this host (pods may still be
        # terminating after the hook), and the namespace install.yml created is gone.
        wait_for("nothing of ours left", lambda: not leftovers(lab), timeout=120)
        assert lab.kubectl("get", "crd", CRD, check=False).returncode != 0
        assert lab.kubectl("get", "namespace", STACK_NAMESPACE, check=False).returncode != 0
    finally:
        if fault_injected:  # xpud keeps a sticky fault in /var/lib/openxpu across restarts
            xpu_smi(lab, "clear-fault", "-i", str(FAULTY_DEVICE))
        if not uninstalled:
            lab.helm(
                "uninstall", "openxpu", "-n", STACK_NAMESPACE, "--wait", "--timeout=5m", check=False
            )
            lab.kubectl("delete", "namespace", STACK_NAMESPACE, "--ignore-not-found", timeout=300)
            lab.kubectl("delete", "crd", CRD, "--ignore-not-found", timeout=180, check=False)
