"""The lab is a real cluster: a Ready node, pods from the local image store, clean `down`."""

from __future__ import annotations

import os
import signal
import time

import pytest

from .conftest import LabCluster

pytestmark = pytest.mark.e2e

DONE = {"Succeeded", "Failed"}


def test_node_is_ready(lab_cluster: LabCluster) -> None:
    node = lab_cluster.kubectl_json("get", "node", lab_cluster.node_name)
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}  # type: ignore[index]
    assert conds["Ready"] == "True"
    info = node["status"]["nodeInfo"]  # type: ignore[index]
    assert info["containerRuntimeVersion"].startswith("containerd://1.7")  # CDI-capable
    assert info["kubeletVersion"].startswith("v1.33")


def test_kubectl_run_busybox_from_local_store(lab_cluster: LabCluster) -> None:
    # From inside the pod: the pod network, kube-proxy's rules for the kubernetes Service
    # and the API server's TLS (/livez is open to anonymous callers and answers "ok").
    script = "echo hello-from-lab; wget -q -O- --no-check-certificate https://10.96.0.1/livez"
    with lab_cluster.pod("bb", "busybox", "sh", "-c", script) as name:
        assert lab_cluster.wait_pod_phase(name, DONE) == "Succeeded"
        logs = lab_cluster.kubectl("logs", name).stdout.split()
        assert logs == ["hello-from-lab", "ok"]


def test_cluster_dns_resolves_services(lab_cluster: LabCluster) -> None:
    with lab_cluster.pod(
        "dns", "busybox", "nslookup", "kubernetes.default.svc.cluster.local"
    ) as name:
        assert lab_cluster.wait_pod_phase(name, DONE) == "Succeeded"
        assert "10.96.0.1" in lab_cluster.kubectl("logs", name).stdout


def test_long_running_pod_reaches_running(lab_cluster: LabCluster) -> None:
    with lab_cluster.pod("sleeper", "busybox", "sleep", "300") as name:
        assert lab_cluster.wait_pod_phase(name, {"Running"}) == "Running"
        out = lab_cluster.kubectl("exec", name, "--", "cat", "/etc/hostname").stdout
        assert out.strip() == name


def test_kubelet_restart_keeps_pods(lab_cluster: LabCluster) -> None:
    with lab_cluster.pod("survivor", "busybox", "sleep", "300") as name:
        lab_cluster.wait_pod_phase(name, {"Running"})
        before = lab_cluster.lab.status()["components"]["kubelet"]
        lab_cluster.restart_kubelet()
        after = lab_cluster.lab.status()["components"]["kubelet"]
        assert after is not None and after != before
        assert lab_cluster.lab.node_ready()
        assert lab_cluster.wait_pod_phase(name, {"Running"}) == "Running"


def test_openxpu_image_has_the_packages(lab_cluster: LabCluster) -> None:
    code = "import openxpu_runtime; print('openxpu-image-ok')"
    with lab_cluster.pod("pkgs", "openxpu", "python3", "-c", code) as name:
        assert lab_cluster.wait_pod_phase(name, DONE) == "Succeeded"
        assert "openxpu-image-ok" in lab_cluster.kubectl("logs", name).stdout


def test_down_leaves_nothing_and_up_is_warm(lab_cluster: LabCluster) -> None:
    """`down` with a pod running leaves no process, mount, netns, link or iptables chain;
    the next `up` (warm: everything cached) brings the node back Ready quickly."""
    with lab_cluster.pod("victim", "busybox", "sleep", "600") as name:
        lab_cluster.wait_pod_phase(name, {"Running"})
        lab = lab_cluster.lab
        lab.down()
        assert lab.leftovers() == []
        t0 = time.monotonic()
        res = lab.up(openxpu_image=False)
        warm = time.monotonic() - t0
        print(f"\nwarm up: {warm:.1f}s total, {res.ready_seconds:.1f}s to node Ready")
        assert res.built_seconds == 0
        assert warm < 60


def test_down_after_a_crash_leaves_nothing(lab_cluster: LabCluster) -> None:
    """Every lab process SIGKILLed (a crash), containers still running under their shims:
    `down` still stops them and removes everything; `up` then brings the node back."""
    with lab_cluster.pod("orphan", "busybox", "sleep", "600") as name:
        lab_cluster.wait_pod_phase(name, {"Running"})
        lab = lab_cluster.lab
        for pid in lab.status()["components"].values():
            if pid:
                os.kill(pid, signal.SIGKILL)
        lab.down()
        assert lab.leftovers() == []
        lab.up(openxpu_image=False)
        assert lab.node_ready()
