"""The node: containerd (CRI + CDI), CNI bridge, kubelet and kube-proxy configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path

from openxpu_lab import paths
from openxpu_lab.controlplane import Credentials
from openxpu_lab.paths import write_if_changed
from openxpu_lab.settings import (
    BRIDGE,
    CLUSTER_DNS_IP,
    CLUSTER_DOMAIN,
    CNI_NETWORK,
    DEFAULT_KUBELET_ROOT,
    POD_CIDR,
    PROFILE_LABEL,
    LabSettings,
)

PAUSE_IMAGE = "localhost/openxpu-lab/pause:1"
CNI_BIN_DIR = "/usr/lib/cni"
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
RUNC = "/usr/sbin/runc"
KUBELET_ROOT_MARKER = ".openxpu-lab"


def containerd_config(s: LabSettings) -> str:
    lay = s.layout
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    cdi_dirs = ", ".join(json.dumps(d) for d in CDI_SPEC_DIRS)
    return f"""version = 2
root = "{lay.containerd_root}"
state = "{lay.containerd_state}"
oom_score = 0

[grpc]
  address = "{lay.containerd_socket}"

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Devices are handed to containers as CDI names (openxpu.io/xpu=<uuid>).
  enable_cdi = true
  cdi_spec_dirs = [{cdi_dirs}]
  # The host's capability bounding set lacks CAP_SYS_RESOURCE: never ask runc for an
  # oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  # Pods' network namespaces under our state dir, not the host's /var/run/netns: `down`
  # removes them with it, even those of a sandbox a crash cut short (no container names it).
  netns_mounts_under_state_dir = true

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{lay.cni_conf_dir}"
  max_conf_num = 1
"""


def cni_config(s: LabSettings) -> str:
    doc = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # No masquerade: pods talk to each other and to this host only.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": s.node.pod_cidr, "gateway": s.node.pod_gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(s.layout.cni_ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


def kubelet_config(s: LabSettings, c: Credentials) -> str:
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": s.node.ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(c.ca.cert)},
        },
        "authorization": {"mode": "Webhook"},
        # cgroup v1 host without systemd as pid 1: cgroupfs is the only driver that works.
        "cgroupDriver": "cgroupfs",
        # Pods under the lab's own cgroup root: `down` may kill what is there and nothing
        # in another kubelet's /kubepods.
        "cgroupRoot": f"/{s.node.cgroup_root}",
        "containerRuntimeEndpoint": f"unix://{s.layout.containerd_socket}",
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [CLUSTER_DNS_IP],
        "failSwapOn": False,
        "resolvConf": "/etc/resolv.conf",
        # A dev machine's disk is often fuller than a server's: do not evict for it.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        # Images are imported, never pulled: garbage collecting them would lose them.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False,
        "nodeStatusUpdateFrequency": "5s",
        "maxPods": 110,
    }
    return json.dumps(doc, indent=2) + "\n"


def kube_proxy_config(s: LabSettings, c: Credentials) -> str:
    doc = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(c.proxy_kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "hostnameOverride": s.node_name,
        "bindAddress": s.node.ip,
        "metricsBindAddress": "127.0.0.1:10249",
        # NodePorts answer on the lab's node address only, not on the host's own NICs.
        "nodePortAddresses": [f"{s.node.ip}/32"],
        "healthzBindAddress": "127.0.0.1:10256",
        # Leave the host's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }
    return json.dumps(doc, indent=2) + "\n"


def _kubelet_root_dir(pid: int) -> Path | None:
    """The --root-dir of a running kubelet process in our mount namespace, None if `pid` is
    no kubelet or one of another mount namespace (a worker node's: its root is private)."""
    try:
        if Path(f"/proc/{pid}/comm").read_text().strip() != "kubelet":
            return None
        if os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
            return None
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not cmdline:
        return None  # a zombie (a stopped kubelet nobody has reaped yet) uses nothing
    argv = cmdline.decode(errors="replace").split("\0")
    root = str(DEFAULT_KUBELET_ROOT)
    for i, arg in enumerate(argv):
        if arg.startswith("--root-dir="):
            root = arg.split("=", 1)[1]
        elif arg == "--root-dir" and i + 1 < len(argv):
            root = argv[i + 1]
    return Path(root)


def kubelet_root_owned_by_lab(s: LabSettings) -> bool:
    marker = s.kubelet_root / KUBELET_ROOT_MARKER
    try:
        return marker.read_text().strip() == str(s.layout.root)
    except OSError:
        return False


def foreign_kubelet_root(s: LabSettings, lab_kubelet_pid: int | None) -> str | None:
    """Why the kubelet root belongs to someone else, or None when the lab may use it."""
    root = s.kubelet_root
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == lab_kubelet_pid:
            continue
        other = _kubelet_root_dir(int(proc.name))
        if other is not None and other.resolve() == root.resolve():
            return f"a kubelet that is not the lab's (pid {proc.name}) runs on {root}"
    marker = root / KUBELET_ROOT_MARKER
    if marker.exists():
        owner = marker.read_text().strip()
        # An empty marker was written by an older lab, which claimed it the same way.
        if owner and owner != str(s.layout.root):
            return f"{root} belongs to the lab with state dir {owner}"
        return None
    if root.is_dir() and any(root.iterdir()):
        return f"{root} holds another kubelet's files (no {KUBELET_ROOT_MARKER} marker)"
    return None


def write_node_configs(s: LabSettings, c: Credentials) -> None:
    lay = s.layout
    lay.ensure()
    for d in (lay.containerd_root, lay.containerd_state, lay.cni_conf_dir, lay.cni_ipam_dir):
        d.mkdir(parents=True, exist_ok=True)
    if s.node.is_host:
        # Marks the kubelet root as this lab's, so `down` may unmount under it and `--purge`
        # delete it; another lab or kubelet finds it taken. A worker's is private to it.
        s.kubelet_root.mkdir(parents=True, exist_ok=True)
        write_if_changed(s.kubelet_root / KUBELET_ROOT_MARKER, f"{lay.root}\n")
    write_if_changed(lay.containerd_config, containerd_config(s))
    write_if_changed(lay.cni_conf_dir / f"10-{CNI_NETWORK}.conflist", cni_config(s))
    write_if_changed(lay.config / "kubelet.json", kubelet_config(s, c))
    write_if_changed(lay.config / "kube-proxy.json", kube_proxy_config(s, c))


def containerd_env() -> dict[str, str]:
    # Our shim must win over any containerd-shim-runc-v2 that a Debian package put on PATH.
    return {"PATH": f"{paths.containerd_bin_dir()}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


def containerd_argv(s: LabSettings) -> list[str]:
    return [
        str(paths.containerd_bin_dir() / "containerd"),
        f"--config={s.layout.containerd_config}",
        "--log-level=info",
    ]


def kubelet_argv(s: LabSettings, c: Credentials) -> list[str]:
    return [
        str(paths.k8s_bin_dir() / "kubelet"),
        f"--config={s.layout.config / 'kubelet.json'}",
        f"--kubeconfig={c.kubelet_kubeconfig}",
        f"--root-dir={s.kubelet_root}",
        f"--cert-dir={s.kubelet_root / 'pki'}",
        f"--hostname-override={s.node_name}",
        f"--node-ip={s.node.ip}",
        *([f"--node-labels={PROFILE_LABEL}={s.node.profile}"] if s.node.profile else []),
        "--v=1",
    ]


def kube_proxy_argv(s: LabSettings) -> list[str]:
    return [
        str(paths.k8s_bin_dir() / "kube-proxy"),
        f"--config={s.layout.config / 'kube-proxy.json'}",
        "--v=1",
    ]


def ctr(s: LabSettings, *args: str | Path) -> list[str]:
    return [
        str(paths.containerd_bin_dir() / "ctr"),
        "--address",
        str(s.layout.containerd_socket),
        "--namespace",
        "k8s.io",
        *[str(a) for a in args],
    ]
