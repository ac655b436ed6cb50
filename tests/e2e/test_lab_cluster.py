"""The lab is a real cluster: a Ready node, pods from the local image store, clean `down`."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from lab import foreign
from openxpu_lab.settings import APISERVER_PORT, NODE_IP

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


def _listening_addresses(port: int) -> set[str]:
    """Local addresses of the host's TCP sockets listening on `port` (/proc/net/tcp*)."""
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, words))
    return found


def test_apiserver_listens_on_the_node_address_only(lab_cluster: LabCluster) -> None:
    """Not on every address: on the node address, where pods reach it through the
    kubernetes Service. Host clients keep dialling loopback (the lab's NAT rule)."""
    assert _listening_addresses(APISERVER_PORT) == {NODE_IP}
    kubeconfig = json.loads(lab_cluster.kubeconfig.read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{APISERVER_PORT}"
    assert lab_cluster.kubectl("get", "--raw", "/readyz").stdout == "ok"


def _can_i(lab_cluster: LabCluster, kubeconfig: str, *request: str) -> str:
    return lab_cluster.kubectl(
        "--kubeconfig", kubeconfig, "auth", "can-i", *request, check=False
    ).stdout.strip()


def test_coredns_runs_with_an_identity_that_cannot_create_pods(lab_cluster: LabCluster) -> None:
    corefile = (lab_cluster.lab.layout.config / "Corefile").read_text()
    match = re.search(r"kubeconfig (\S+)", corefile)
    assert match is not None
    kubeconfig = match.group(1)
    assert _can_i(lab_cluster, kubeconfig, "watch", "services", "-A") == "yes"
    assert _can_i(lab_cluster, kubeconfig, "create", "pods") == "no"
    assert _can_i(lab_cluster, kubeconfig, "get", "secrets", "-n", "kube-system") == "no"


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


def test_down_spares_another_clusters_chains_and_pods(lab_cluster: LabCluster) -> None:
    """Another cluster on the host: chains with names the lab's components use, there before
    the lab came up (an older kube-proxy's KUBE-MARK-DROP, portmap's CNI-HOSTPORT-SETMARK),
    chains and pods (processes in cgroups called kubepods) made while it runs. `down`
    removes everything of the lab's and none of theirs. (A foreign KUBE-SVC-* chain would
    not do: the lab's kube-proxy itself deletes service chains it does not know.)"""
    lab = lab_cluster.lab
    tag = foreign.tag()
    lab.down()
    with foreign.chains("nat", "KUBE-MARK-DROP", "CNI-HOSTPORT-SETMARK") as before:
        lab.up(openxpu_image=False)
        with (
            foreign.chains("filter", f"KUBE-FOREIGN-{tag}", f"CNI-FOREIGN-{tag}") as during,
            foreign.pods() as pods,
            lab_cluster.pod("lab-pod", "busybox", "sleep", "600") as name,
        ):
            lab_cluster.wait_pod_phase(name, {"Running"})
            lab.down()
            assert lab.leftovers() == []
            assert all(foreign.chain_exists("nat", c) for c in before)
            assert all(foreign.chain_exists("filter", c) for c in during)
            assert [p.poll() for p in pods] == [None, None]
    lab.up(openxpu_image=False)
    assert lab.node_ready()
