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
# Every pod of the cluster; node i (0 for the host's own node) takes the /24 number i.
POD_CIDR = "10.88.0.0/16"
POD_GATEWAY = "10.88.0.1"
# Node addresses: the host's node is NODE_IP; worker k is 10.87.0.(10+k), on the same
# bridge as NODE_IP (10.87.0.2 is KWOK's fake node address).
NODE_NETWORK = "10.87.0.0/24"
_WORKER_IP_BASE = 10
MAX_NODES = 200
WORKER_LINK_PREFIX = "oxlab-w"
# Label the operator's node pools select on.
PROFILE_LABEL = "openxpu.io/emulation.profile"
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
class NodeSpec:
    """One real node of the lab: index 0 is the host's own node, k >= 1 is worker k, which
    runs in its own network and mount namespaces (nodes.py)."""

    index: int
    name: str
    profile: str | None = None

    @property
    def is_host(self) -> bool:
        return self.index == 0

    @property
    def ip(self) -> str:
        return NODE_IP if self.is_host else f"10.87.0.{_WORKER_IP_BASE + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.88.{self.index}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.88.{self.index}.1"

    @property
    def short(self) -> str:
        """Its name without the lab's prefix (`worker-2`), as --node-profile accepts it."""
        return "" if self.is_host else f"worker-{self.index}"

    @property
    def netns(self) -> str:
        """Its network namespace (`ip netns`) and the host end of its veth."""
        return f"{WORKER_LINK_PREFIX}{self.index}"

    @property
    def cgroup_root(self) -> str:
        # Each kubelet its own cgroup root: `node kill` kills exactly that node's pods.
        return "openxpu-lab" if self.is_host else f"openxpu-lab-w{self.index}"


def worker_name(lab_name: str, k: int) -> str:
    return f"{lab_name}-worker-{k}"


def node_specs(lab_name: str, count: int, profiles: dict[str, str]) -> list[NodeSpec]:
    """The lab's `count` nodes; `profiles` maps a node's name or short name (`worker-2`) to
    its emulation profile. Raises ValueError naming what is wrong."""
    if not 1 <= count <= MAX_NODES:
        raise ValueError(f"--nodes must be between 1 and {MAX_NODES}, not {count}")
    specs = [NodeSpec(0, lab_name)] + [
        NodeSpec(k, worker_name(lab_name, k)) for k in range(1, count)
    ]
    known = {s.name: s for s in specs} | {s.short: s for s in specs if s.short}
    unknown = sorted(set(profiles) - set(known))
    if unknown:
        raise ValueError(
            f"--node-profile names no node of this lab: {', '.join(unknown)} "
            f"(nodes: {', '.join(s.name for s in specs)})"
        )
    chosen = {known[key].index: profile for key, profile in profiles.items()}
    return [NodeSpec(s.index, s.name, chosen.get(s.index)) for s in specs]


def parse_node_profile(text: str) -> tuple[str, str]:
    """`worker-2=x1-4` -> ("worker-2", "x1-4")."""
    node, sep, profile = text.partition("=")
    if not sep or not node or not profile:
        raise ValueError(f"expected NODE=PROFILE (e.g. worker-2=x1-4), not {text!r}")
    return node, profile


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
    # Which of the lab's nodes these settings are for (0: the host's own node).
    node_index: int = 0
    node_profile: str | None = None

    @property
    def node(self) -> NodeSpec:
        return NodeSpec(self.node_index, self.node_name, self.node_profile)

    @property
    def server_url(self) -> str:
        # A worker's loopback is its own network namespace's: it dials the node address.
        host = "127.0.0.1" if self.node.is_host else self.advertise_ip
        return f"https://{host}:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"https://127.0.0.1:{self.etcd_client_port}"

    @property
    def etcd_peer_url(self) -> str:
        return f"https://127.0.0.1:{self.etcd_peer_port}"

    @staticmethod
    def for_state(root: Path, node_name: str | None = None) -> LabSettings:
        return LabSettings(StateLayout(root), node_name or default_node_name())

    def for_worker(self, spec: NodeSpec) -> LabSettings:
        """Settings of worker `spec`: its files under nodes/<name> of the state dir; inside
        its mount namespace the kubelet root is the standard path again."""
        return LabSettings(
            StateLayout(self.layout.nodes / spec.name),
            spec.name,
            node_index=spec.index,
            node_profile=spec.profile,
        )
