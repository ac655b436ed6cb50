"""KWOK-simulated nodes beside the real one, for scale tests of the scheduler and operator.

The kwok controller (built from sigs.k8s.io/kwok) fakes the kubelet of every Node that
carries the annotation below: it keeps them Ready and moves their pods to Running. They are
tainted so that only pods that opt in (tolerate the taint) land there.
"""

from __future__ import annotations

from typing import Any

from openxpu_lab import gobuild, health, kube, procs
from openxpu_lab.progress import Progress
from openxpu_lab.settings import LabSettings
from openxpu_lab.shell import LabError

ANNOTATION = "kwok.x-k8s.io/node"
TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
NAME_PREFIX = "kwok-node-"


def kwok_argv(s: LabSettings) -> list[str]:
    return [
        str(gobuild.kwok_tool().bin_dir / "kwok"),
        # Its own identity, bound by rbac.py to what it does; not the lab's admin.
        f"--kubeconfig={s.layout.config / 'kwok.kubeconfig'}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
        # Pods on fake nodes get addresses from a range no real pod uses.
        "--cidr=10.89.0.0/16",
        "--node-ip=10.87.0.2",
        "--server-address=127.0.0.1:10247",
    ]


def node_manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "spec": {"taints": [TAINT]},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
            "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
        },
    }


def ensure_kwok_controller(s: LabSettings, progress: Progress) -> None:
    lay = s.layout
    gobuild.ensure(gobuild.kwok_tool(), progress)
    if procs.alive("kwok", lay.pids) is None:
        procs.start("kwok", kwok_argv(s), lay.pids, lay.logs)
    health.wait_for(
        "kwok /healthz",
        lambda: health.http_ok("http://127.0.0.1:10247/healthz"),
        timeout=60,
        component="kwok",
        pid_dir=lay.pids,
        log_dir=lay.logs,
    )


def ensure_kwok_nodes(s: LabSettings, api: Any, count: int, progress: Progress) -> None:
    """Run the kwok controller and make sure exactly `count` fake nodes exist."""
    ensure_kwok_controller(s, progress)
    core = kube.core(api)
    for i in range(count):
        body = node_manifest(f"{NAME_PREFIX}{i}")
        code = kube.status_of(core.create_node, body)
        if code not in (200, 409):
            raise LabError(f"creating KWOK node {NAME_PREFIX}{i}: HTTP {code}")
    # Fewer requested than before: remove the extra ones.
    delete_kwok_nodes(api, first=count)


def delete_kwok_nodes(api: Any, first: int = 0) -> int:
    """Delete fake nodes from number `first` on; returns how many went. Fake nodes have no
    kubelet to come back: `down` drops them all."""
    core = kube.core(api)
    i = first
    while kube.status_of(core.delete_node, f"{NAME_PREFIX}{i}") == 200:
        i += 1
    return i - first
