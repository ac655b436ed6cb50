"""Where the lab keeps its cache (built binaries, images) and its state (one running cluster)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from openxpu_lab import versions


def cache_root() -> Path:
    """Build cache shared by every lab on this machine: slow to make, safe to reuse."""
    env = os.environ.get("OPENXPU_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "openxpu"


def default_state_dir() -> Path:
    env = os.environ.get("OPENXPU_LAB_STATE")
    return Path(env) if env else cache_root() / "lab"


def k8s_bin_dir() -> Path:
    return cache_root() / "k8s" / versions.KUBERNETES / "bin"


def containerd_bin_dir() -> Path:
    return cache_root() / "containerd" / versions.CONTAINERD / "bin"


def helm_bin_dir() -> Path:
    return cache_root() / "helm" / versions.HELM / "bin"


def coredns_bin_dir() -> Path:
    return cache_root() / "coredns" / versions.COREDNS / "bin"


def kwok_bin_dir() -> Path:
    return cache_root() / "kwok" / versions.KWOK / "bin"


def prometheus_operator_bin_dir() -> Path:
    return cache_root() / "prometheus-operator" / versions.PROMETHEUS_OPERATOR / "bin"


def prometheus_bin_dir() -> Path:
    return cache_root() / "prometheus" / versions.PROMETHEUS / "bin"


def images_dir() -> Path:
    return cache_root() / "images"


@dataclass(frozen=True)
class StateLayout:
    """Every file of one running lab lives under `root`, so `down` knows what is its own."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def etcd_data(self) -> Path:
        return self.root / "etcd"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.root / "cni" / "ipam"

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def nodes(self) -> Path:
        """One directory per worker node (a StateLayout of its own) and their namespaces."""
        return self.root / "nodes"

    @property
    def node_list(self) -> Path:
        """The nodes `up` was asked for (count, profiles), so `down` and `status` know them."""
        return self.root / "nodes.json"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.root / "admin.kubeconfig"

    @property
    def info(self) -> Path:
        """JSON summary written by `up` (addresses, node name) for `status` and tests."""
        return self.root / "lab.json"

    @property
    def host_claims(self) -> Path:
        """What `up` made outside the state dir (links, chains, cgroups, the kubelet root),
        so that `down` removes exactly that and nothing another cluster owns."""
        return self.root / "host.json"

    def ensure(self) -> None:
        # Private from the moment they exist: the state dir holds keys and kubeconfigs.
        for d in (self.root, self.pki, self.logs, self.pids, self.config):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write through a fresh temporary file created with `mode` (never wider, whatever the
    umask): a private key is never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Rewrite only on change: kube-proxy (and others) watch their files and exit on writes."""
    if path.exists() and path.read_text() == text:
        return False
    write_atomic(path, text.encode(), mode)
    return True
