"""Cluster DNS: CoreDNS as a host process on the node address, behind the usual kube-dns
Service (10.96.0.10), so pods resolve `<service>.<namespace>.svc.cluster.local` as on any
cluster. It runs on the host because the lab pulls no images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from openxpu_lab import gobuild, kube
from openxpu_lab.paths import write_if_changed
from openxpu_lab.settings import CLUSTER_DNS_IP, CLUSTER_DOMAIN, NODE_IP, LabSettings
from openxpu_lab.shell import LabError

HEALTH_PORT = 10253
READY_PORT = 10252


def corefile(s: LabSettings, kubeconfig: Path, bind: str = NODE_IP, port: int = 53) -> str:
    return f""".:{port} {{
    bind {bind}
    errors
    health 127.0.0.1:{HEALTH_PORT}
    ready 127.0.0.1:{READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    forward . /etc/resolv.conf
    cache 30
}}
"""


def coredns_argv(s: LabSettings, kubeconfig: Path) -> list[str]:
    """CoreDNS with its own identity (rbac.py: it may only read services, endpoint slices
    and namespaces), not the lab's admin."""
    path = s.layout.config / "Corefile"
    write_if_changed(path, corefile(s, kubeconfig))
    return [str(gobuild.coredns_tool().bin_dir / "coredns"), "-conf", str(path)]


def ensure_service(api: Any) -> None:
    """kube-system/kube-dns without a selector, its endpoint being the host process."""
    labels = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    ports = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    svc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
        "spec": {"clusterIP": CLUSTER_DNS_IP, "ports": ports},
    }
    slice_: dict[str, Any] = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "kube-dns-openxpu-lab",
            "namespace": "kube-system",
            "labels": {
                "kubernetes.io/service-name": "kube-dns",
                "endpointslice.kubernetes.io/managed-by": "openxpu-lab",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
        "ports": ports,
    }
    core, discovery = kube.core(api), client.DiscoveryV1Api(api)
    ns = "kube-system"
    objects = [
        (core.read_namespaced_service, core.create_namespaced_service, svc),
        (
            discovery.read_namespaced_endpoint_slice,
            discovery.create_namespaced_endpoint_slice,
            slice_,
        ),
    ]
    for read, create, obj in objects:
        name = obj["metadata"]["name"]
        # Look first: re-creating the Service fails on its taken IP (422), not with 409.
        if kube.exists(read, name, ns):
            continue
        code = kube.status_of(create, ns, obj)
        if code not in (200, 409):
            raise LabError(f"creating {obj['kind']} kube-dns for cluster DNS: HTTP {code}")
