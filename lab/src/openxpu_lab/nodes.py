"""Worker nodes: a kubelet, containerd and kube-proxy in their own network and mount
namespaces, the way kind runs a node in a container.

Worker k has the network namespace `oxlab-wk` (`ip netns`), joined to the lab's bridge
`oxlab-host` by a veth (`oxlab-wk` on the host, `eth0` inside) with the node address
10.87.0.(10+k) and a default route to the host, which routes each node's pod /24 to it.
Its mount namespace is kept by a bind mount of the namespace file under
`nodes/ns/<name>` of the state dir; inside it, every directory a node owns is bound from
`nodes/<name>/fs/...` and /dev is a tmpfs of its own, so two nodes never see each other's
xpud, device nodes or plugin sockets. Its processes are started with `nsenter`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
from pathlib import Path

from openxpu_lab import cleanup, procs
from openxpu_lab.settings import (
    HOST_LINK,
    NODE_IP,
    NODE_NETWORK,
    POD_CIDR,
    WORKER_LINK_PREFIX,
    LabSettings,
    NodeSpec,
)
from openxpu_lab.shell import run

# What a node owns, private to each worker: the kubelet root (device-plugin and
# pod-resources sockets), the runtime's sockets and state, CDI specs, CNI's cache, the
# pods' network namespace files, runc's state and the pod logs (a kubelet deletes the log
# directories of pods it does not know).
PRIVATE_DIRS = (
    "/var/lib/kubelet",
    "/var/log/pods",
    "/var/log/containers",
    "/run/containerd",
    "/run/openxpu",
    "/var/lib/openxpu",
    "/opt/openxpu",
    "/run/cdi",
    "/etc/cdi",
    "/var/lib/cni",
    "/run/netns",
)
# Host devices a node's own /dev gets (the kubelet's OOM watcher reads /dev/kmsg).
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "kmsg")
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy")

# Runs inside the new mount namespace (private propagation): bind the node's own
# directories, then give it a /dev of its own.
_MOUNT_SCRIPT = r"""
set -e
fs="$1"; dev="$2"; shift 2
for d in "$@"; do
    mkdir -p "$fs$d" "$d"
    mount --bind "$fs$d" "$d"
done
mkdir -p "$dev"
mount -t tmpfs -o mode=0755,nosuid oxlab-dev "$dev"
for n in __DEVICES__; do [ -e "/dev/$n" ] && cp -a "/dev/$n" "$dev/"; done
mkdir "$dev/pts" "$dev/shm"
mount --rbind /dev/pts "$dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev oxlab-shm "$dev/shm"
ln -s /proc/self/fd "$dev/fd"
ln -s /proc/self/fd/0 "$dev/stdin"
ln -s /proc/self/fd/1 "$dev/stdout"
ln -s /proc/self/fd/2 "$dev/stderr"
ln -s pts/ptmx "$dev/ptmx"
mount --move "$dev" /dev
""".replace("__DEVICES__", " ".join(_DEVICES))


def ns_dir(lab: LabSettings) -> Path:
    return lab.layout.nodes / "ns"


def mount_ns_file(lab: LabSettings, spec: NodeSpec) -> Path:
    return ns_dir(lab) / spec.name


def netns_path(spec: NodeSpec) -> Path:
    return Path("/run/netns") / spec.netns


def node_root(lab: LabSettings, spec: NodeSpec) -> Path:
    return lab.layout.nodes / spec.name


def private_dir(lab: LabSettings, spec: NodeSpec, path: str) -> Path:
    """Where the worker's own copy of `path` lives on the host."""
    return node_root(lab, spec) / "fs" / path.lstrip("/")


def wrap(lab: LabSettings, spec: NodeSpec, argv: list[str]) -> list[str]:
    """`argv` run inside the worker's namespaces."""
    return [
        "nsenter",
        f"--mount={mount_ns_file(lab, spec)}",
        f"--net={netns_path(spec)}",
        "--",
        *argv,
    ]


def _is_mountpoint(path: Path) -> bool:
    return str(path) in cleanup.mounts_under(path)


def ensure_network(spec: NodeSpec) -> None:
    """The worker's network namespace, veth, address and routes (host and worker side)."""
    ns, ip = spec.netns, spec.ip
    if not netns_path(spec).exists():
        run(["ip", "netns", "add", ns])
    if not Path(f"/sys/class/net/{ns}").exists():
        run(["ip", "link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run(["ip", "link", "set", ns, "master", HOST_LINK, "up"])
    inside = ["ip", "-n", ns]
    if ip not in run([*inside, "-4", "-o", "addr", "show", "dev", "eth0"]).stdout:
        run([*inside, "addr", "add", f"{ip}/24", "dev", "eth0"])
    run([*inside, "link", "set", "lo", "up"])
    run([*inside, "link", "set", "eth0", "up"])
    run([*inside, "route", "replace", "default", "via", NODE_IP, "dev", "eth0"])
    # The host reaches the node address on the bridge and the node's pods through it.
    run(["ip", "route", "replace", f"{ip}/32", "dev", HOST_LINK, "src", NODE_IP])
    run(["ip", "route", "replace", spec.pod_cidr, "via", ip, "dev", HOST_LINK])
    # Per network namespace: forward pod traffic, and let kube-proxy see bridged traffic.
    for key in ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"):
        run(
            ["nsenter", f"--net={netns_path(spec)}", "sh", "-c", f"echo 1 > /proc/sys/{key}"],
            check=False,
        )


def ensure_mounts(lab: LabSettings, spec: NodeSpec) -> None:
    """The worker's persistent mount namespace with its private directories and /dev."""
    d = ns_dir(lab)
    d.mkdir(parents=True, exist_ok=True)
    if not _is_mountpoint(d):
        # A namespace file can only be bind-mounted where the mount does not propagate
        # (into the new namespace itself): a private mount of its own.
        run(["mount", "--bind", str(d), str(d)])
        run(["mount", "--make-private", str(d)])
    f = mount_ns_file(lab, spec)
    if _is_mountpoint(f):
        return
    f.touch()
    run(
        [
            "unshare",
            f"--mount={f}",
            "--propagation",
            "private",
            "sh",
            "-c",
            _MOUNT_SCRIPT,
            "sh",
            str(node_root(lab, spec) / "fs"),
            str(node_root(lab, spec) / "dev"),
            *PRIVATE_DIRS,
        ]
    )


def ensure_namespaces(lab: LabSettings, spec: NodeSpec) -> None:
    ensure_network(spec)
    ensure_mounts(lab, spec)


def node_pids(node: LabSettings) -> dict[str, int | None]:
    return {c: procs.alive(c, node.layout.pids) for c in NODE_COMPONENTS}


def kill_node(node: LabSettings) -> int:
    """SIGKILL every process of a node: its kubelet, kube-proxy, containerd, shims and
    every process in its cgroup root (its pods). Returns how many were killed."""
    pids = [p for p in node_pids(node).values() if p is not None]
    pids += cleanup.shim_pids(node.layout.containerd_socket)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed = len(pids) + cleanup.kill_cgroup(node.node.cgroup_root)
    for c in NODE_COMPONENTS:
        procs.stop(c, node.layout.pids, grace=5)  # waits until gone, drops the pid file
    return killed


def remove_namespaces(lab: LabSettings, spec: NodeSpec) -> list[str]:
    """Undo ensure_namespaces (the node's processes must be gone)."""
    done: list[str] = []
    f = mount_ns_file(lab, spec)
    if _is_mountpoint(f):
        run(["umount", str(f)], check=False)
        done.append(f"mount namespace of {spec.name}")
    f.unlink(missing_ok=True)
    for route in (f"{spec.ip}/32", spec.pod_cidr):
        if run(["ip", "route", "show", route], check=False).stdout.strip():
            run(["ip", "route", "del", route], check=False)
            done.append(f"route {route}")
    if netns_path(spec).exists():
        # Deleting the namespace deletes eth0, and with it the host end of the veth.
        run(["ip", "netns", "del", spec.netns], check=False)
        done.append(f"network namespace {spec.netns}")
    if Path(f"/sys/class/net/{spec.netns}").exists():
        run(["ip", "link", "del", spec.netns], check=False)
    return done


def release_ns_dir(lab: LabSettings) -> None:
    d = ns_dir(lab)
    if _is_mountpoint(d):
        run(["umount", str(d)], check=False)


def leftovers(lab: LabSettings, spec: NodeSpec) -> list[str]:
    found = [f"network namespace {spec.netns}"] if netns_path(spec).exists() else []
    if _is_mountpoint(mount_ns_file(lab, spec)):
        found.append(f"mount namespace of {spec.name}")
    return found


def worker_netns() -> list[str]:
    """Every worker network namespace on the host, recorded or not."""
    d = Path("/run/netns")
    return sorted(p.name for p in d.glob(f"{WORKER_LINK_PREFIX}*")) if d.exists() else []


def lab_routes() -> list[str]:
    """Host routes into the lab's node and pod ranges."""
    out = run(["ip", "-4", "route", "show"], check=False).stdout.splitlines()
    nets = (ipaddress.ip_network(POD_CIDR), ipaddress.ip_network(NODE_NETWORK))
    found = []
    for line in out:
        dst = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if any(ipaddress.ip_network(dst, strict=False).subnet_of(n) for n in nets):  # type: ignore[arg-type]
                found.append(line)
    return found


def rss_kib(pids: list[int]) -> int:
    """Resident memory of these processes (VmRSS), in KiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total
