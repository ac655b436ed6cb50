"""Several real nodes on one machine: each worker's kubelet, containerd and kube-proxy run in
their own network and mount namespaces; pods talk across nodes; a node fails and recovers;
`down` leaves nothing of any node.

The module grows the session's lab to three nodes and shrinks it back to one at the end,
so the other e2e modules keep their fast one-node cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from openxpu_lab import cleanup, nodes
from openxpu_lab.settings import PROFILE_LABEL

from .conftest import LabCluster, require_no_foreign_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def three_nodes(lab_cluster: LabCluster) -> Iterator[list[str]]:
    require_no_foreign_stack(
        lab_cluster,
        "its operator would put the driver on the new workers, whose own /dev/xpu* and "
        "pod traffic this module checks",
    )
    lab = lab_cluster.lab
    t0 = time.monotonic()
    res = lab.up(openxpu_image=False, nodes_count=3, node_profiles={"worker-2": "x1-4"})
    print(
        f"\n3 nodes Ready in {time.monotonic() - t0:.1f}s; RSS per extra node "
        f"(kubelet + containerd + kube-proxy): {res.info['worker_rss_mib']} MiB",
        file=sys.stderr,
    )
    yield res.info["nodes"]
    lab.up(openxpu_image=False, nodes_count=1)
    assert [s.name for s in lab.node_specs()] == [lab_cluster.node_name]
    left = nodes.worker_netns() + cleanup.worker_cgroup_roots()
    assert not left, f"shrinking to one node left {left}"


def _nsenter(lab_cluster: LabCluster, name: str, script: str) -> str:
    """Run `script` in node `name`'s mount namespace (the host's own for node 1)."""
    spec = next(s for s in lab_cluster.lab.node_specs() if s.name == name)
    prefix = []
    if not spec.is_host:
        prefix = ["nsenter", f"--mount={nodes.mount_ns_file(lab_cluster.lab.settings, spec)}"]
    return subprocess.run(
        [*prefix, "sh", "-c", script], capture_output=True, text=True, check=True
    ).stdout


def _pod(
    lab_cluster: LabCluster,
    prefix: str,
    node_name: str,
    command: list[str],
    labels: dict[str, str] | None = None,
    host_paths: dict[str, str] | None = None,
) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    # host_paths: mount path in the container -> path on the node.
    pairs = enumerate((host_paths or {}).items())
    mounts, volumes = [], []
    for i, (inside, on_node) in pairs:
        mounts.append({"name": f"h{i}", "mountPath": inside})
        volumes.append({"name": f"h{i}", "hostPath": {"path": on_node}})
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "nodeName": node_name,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "c",
                    "image": lab_cluster.images["busybox"],
                    "imagePullPolicy": "Never",
                    "command": command,
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }
    lab_cluster.kubectl("apply", "-f", "-", input_text=json.dumps(body))
    return name


def _delete(lab_cluster: LabCluster, *objects: str) -> None:
    for obj in objects:
        lab_cluster.kubectl("delete", obj, "--wait=false", "--grace-period=1", check=False)


def _ready(lab_cluster: LabCluster) -> dict[str, bool]:
    out = lab_cluster.kubectl_json("get", "nodes", "-l", "!type")
    return {
        n["metadata"]["name"]: any(
            c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"]
        )
        for n in out["items"]  # type: ignore[attr-defined]
    }


def _wait_ready(lab_cluster: LabCluster, name: str, want: bool, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready(lab_cluster).get(name) is want:
            return
        time.sleep(1)
    raise AssertionError(f"node {name} not {'Ready' if want else 'NotReady'} in {timeout}s")


def test_every_node_is_ready_with_its_own_address(
    lab_cluster: LabCluster, three_nodes: list[str]
) -> None:
    host, w1, w2 = three_nodes
    assert (w1, w2) == (f"{host}-worker-1", f"{host}-worker-2")
    assert _ready(lab_cluster) == {host: True, w1: True, w2: True}
    addresses = {}
    for name in three_nodes:
        n: Any = lab_cluster.kubectl_json("get", "node", name)
        addresses[name] = [
            a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"
        ]
        assert n["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://1.7")
    assert addresses == {host: ["10.87.0.1"], w1: ["10.87.0.11"], w2: ["10.87.0.12"]}
    labels: Any = lab_cluster.kubectl_json("get", "node", w2)["metadata"]
    assert labels["labels"][PROFILE_LABEL] == "x1-4"
    status = lab_cluster.lab.status()["nodes"]
    assert [status[n]["ready"] for n in three_nodes] == [True, True, True]
    assert all(all(status[n]["components"].values()) for n in three_nodes)


def test_pods_on_different_nodes_reach_each_other_and_a_service(
    lab_cluster: LabCluster, three_nodes: list[str]
) -> None:
    host, w1, w2 = three_nodes
    app = f"srv-{uuid.uuid4().hex[:6]}"
    serve = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www"
    servers = [
        _pod(lab_cluster, "srv", node, ["sh", "-c", serve], labels={"app": app})
        for node in (host, w1)
    ]
    client = _pod(lab_cluster, "client", w2, ["sleep", "300"])
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app},
        "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    lab_cluster.kubectl("apply", "-f", "-", input_text=json.dumps(service))
    try:
        for pod in [*servers, client]:
            lab_cluster.wait_pod_phase(pod, {"Running"})
        ips = {
            pod: lab_cluster.kubectl("get", "pod", pod, "-o", "jsonpath={.status.podIP}").stdout
            for pod in [*servers, client]
        }
        assert ips[servers[0]].startswith("10.88.0.")
        assert ips[servers[1]].startswith("10.88.1.")
        assert ips[client].startswith("10.88.2.")

        def fetch(url: str) -> str:
            # busybox's own timeout: its `wget -T` crashes (SIGSEGV) in Debian's build.
            return lab_cluster.kubectl(
                "exec", client, "--", "timeout", "10", "wget", "-q", "-O-", url
            ).stdout.strip()

        # worker-2 -> node 1 and worker-2 -> worker-1, pod to pod.
        assert [fetch(f"http://{ips[s]}:8080/") for s in servers] == servers
        # Through the Service by its DNS name: the client's kube-proxy (in worker-2's
        # network namespace) and CoreDNS on the host. Both endpoints answer in time.
        seen: set[str] = set()
        deadline = time.monotonic() + 60
        while seen != set(servers) and time.monotonic() < deadline:
            seen.add(fetch(f"http://{app}.default.svc.cluster.local/"))
        assert seen == set(servers)
    finally:
        _delete(lab_cluster, f"service/{app}", *(f"pod/{p}" for p in [*servers, client]))


def test_a_nodes_files_and_devices_are_its_own(
    lab_cluster: LabCluster, three_nodes: list[str]
) -> None:
    """From the host (nsenter) and from a pod: a node's /run/openxpu, kubelet root and /dev
    are not another node's."""
    host, w1, _ = three_nodes
    tag = uuid.uuid4().hex[:8]
    for name in three_nodes:
        _nsenter(lab_cluster, name, f"mkdir -p /run/openxpu && echo {name} > /run/openxpu/{tag}")
    try:
        for name in three_nodes:
            assert _nsenter(lab_cluster, name, f"cat /run/openxpu/{tag}").strip() == name
            kubelet_root = _nsenter(lab_cluster, name, "ls -a /var/lib/kubelet").split()
            # Only node 1's kubelet root is the host's, which carries the lab's marker.
            assert (".openxpu-lab" in kubelet_root) is (name == host)
            assert "device-plugins" in kubelet_root
        certs = {
            name: _nsenter(lab_cluster, name, "cat /var/lib/kubelet/pki/kubelet.crt")
            for name in three_nodes
        }
        assert len(set(certs.values())) == 3
        # A pod on worker-1 mounting the node's /run/openxpu and /dev sees worker-1's.
        pod = _pod(
            lab_cluster,
            "look",
            w1,
            ["sh", "-c", f"cat /host/run/openxpu/{tag}; ls /host/dev"],
            host_paths={"/host/run/openxpu": "/run/openxpu", "/host/dev": "/dev"},
        )
        try:
            assert lab_cluster.wait_pod_phase(pod, {"Succeeded", "Failed"}) == "Succeeded"
            out = lab_cluster.kubectl("logs", pod).stdout.split()
        finally:
            _delete(lab_cluster, f"pod/{pod}")
        assert out[0] == w1
        assert "null" in out
        host_xpus = {p.name for p in Path("/dev").glob("xpu*")}
        assert not host_xpus & set(out), "worker-1 sees the host node's /dev/xpu* nodes"
    finally:
        for name in three_nodes:
            _nsenter(lab_cluster, name, f"rm -f /run/openxpu/{tag}")


def test_node_kill_then_start(lab_cluster: LabCluster, three_nodes: list[str]) -> None:
    lab = lab_cluster.lab
    _, w1, w2 = three_nodes
    pod = _pod(lab_cluster, "victim", w1, ["sleep", "300"])
    try:
        lab_cluster.wait_pod_phase(pod, {"Running"})
        cgroup = next(s.cgroup_root for s in lab.node_specs() if s.name == w1)
        assert cleanup.cgroup_pids(cgroup), "the pod's processes are in worker-1's cgroup root"
        lab.node_kill(w1)
        # Everything of the node is gone at once, its pod's processes included.
        assert not any(lab.status()["nodes"][w1]["components"].values())
        assert not cleanup.cgroup_pids(cgroup)
        _wait_ready(lab_cluster, w1, False)
        assert _ready(lab_cluster)[w2] is True
        lab.node_start(w1)
        assert _ready(lab_cluster)[w1] is True
    finally:
        _delete(lab_cluster, f"pod/{pod}")


def test_node_stop_stops_its_kubelet_and_containerd_cleanly(
    lab_cluster: LabCluster, three_nodes: list[str]
) -> None:
    lab = lab_cluster.lab
    w2 = three_nodes[2]
    report = lab.node_stop("worker-2")
    assert report == [f"stopped {c} of {w2}" for c in ("kubelet", "kube-proxy", "containerd")]
    assert not any(lab.status()["nodes"][w2]["components"].values())
    lab.node_start("worker-2")
    assert _ready(lab_cluster)[w2] is True


def test_down_with_three_nodes_leaves_nothing(
    lab_cluster: LabCluster, three_nodes: list[str]
) -> None:
    lab = lab_cluster.lab
    pod = _pod(lab_cluster, "left", three_nodes[1], ["sleep", "300"])
    lab_cluster.wait_pod_phase(pod, {"Running"})
    lab.down()
    assert lab.leftovers() == []
    assert nodes.worker_netns() == [] and nodes.lab_routes() == []
    # Back up (warm) for the rest of the module's teardown and the other e2e modules.
    lab.up(openxpu_image=False)
    assert _ready(lab_cluster) == dict.fromkeys(three_nodes, True)
    _delete(lab_cluster, f"pod/{pod}")
