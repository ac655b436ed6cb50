"""The shape of one lab: addresses, ports, names. Fixed defaults so certificates and
kubeconfigs stay valid across restarts and machines."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from openxpu_lab.paths import StateLayout

# The node and API server address lives on the lab's own bridge, not on a host NIC, so it
# is the same on every machine and traffic to it never leaves the host.
NODE_IP = "10.87.0.1"
# A port-less bridge holds NODE_IP: the CNI bridge plugin insists that its own bridge has
# exactly one IPv4 address (the pod gateway), and this kernel has no dummy link type.
HOST_LINK = "oxlab-host"
BRIDGE = "oxlab0"
POD_CIDR = "10.88.0.0/16"
POD_GATEWAY = "10.88.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DNS_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
CNI_NETWORK = "openxpu-lab"
APISERVER_PORT = 6443
# The standard place, not the state dir: device plugins (kubelet.sock), the exporter
# (pod-resources socket) and every chart's hostPath mounts expect the kubelet there.
DEFAULT_KUBELET_ROOT = Path("/var/lib/kubelet")


def default_node_name() -> str:
    name = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().lower()).strip("-")
    return name or "openxpu-lab"


@dataclass(frozen=True)
class LabSettings:
    layout: StateLayout
    node_name: str
    # The API server listens on the node address only (pods reach it there through the
    # kubernetes Service). kube-apiserver takes a single --bind-address, so clients on the
    # host keep dialling loopback and a tagged NAT rule of the lab (network.py) hands
    # 127.0.0.1:6443 to NODE_IP:6443: when the lab is down nothing goes looking for NODE_IP,
    # which is then routed off the machine.
    bind_ip: str = NODE_IP
    advertise_ip: str = NODE_IP
    apiserver_port: int = APISERVER_PORT
    etcd_client_port: int = 12379
    etcd_peer_port: int = 12380
    apiserver_only: bool = False
    kubelet_root: Path = DEFAULT_KUBELET_ROOT

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"https://127.0.0.1:{self.etcd_client_port}"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://127.0.0.1:{self.etcd_peer_port}"

    @staticmethod
    def for_state(root: Path, node_name: str | None = None) -> LabSettings:
        return LabSettings(StateLayout(root), node_name or default_node_name())
