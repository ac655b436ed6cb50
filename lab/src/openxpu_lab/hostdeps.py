"""Debian packages the lab needs on the host, installed with apt when missing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable

from openxpu_lab.progress import Progress
from openxpu_lab.shell import LabError, run

# package -> a file that proves it is installed (cheaper than asking dpkg each time)
PACKAGES: dict[str, str] = {
    "etcd-server": "/usr/bin/etcd",
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "iproute2": "/usr/sbin/ip",
    "mount": "/usr/bin/mount",
    "ethtool": "/usr/sbin/ethtool",
    "socat": "/usr/bin/socat",
    "busybox-static": "/usr/bin/busybox",
    "mmdebstrap": "/usr/bin/mmdebstrap",
    "buildah": "/usr/bin/buildah",
    "gcc": "/usr/bin/gcc",
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
}
NODE_PACKAGES = tuple(PACKAGES)


def missing(names: Iterable[str]) -> list[str]:
    return [n for n in names if not os.path.exists(PACKAGES.get(n, "/nonexistent"))]


def ensure_packages(names: Iterable[str], progress: Progress) -> None:
    todo = missing(names)
    if not todo:
        return
    if os.geteuid() != 0:
        raise LabError(f"missing Debian packages {' '.join(todo)}; run as root to install them")
    if shutil.which("apt-get") is None:
        raise LabError(f"missing packages {' '.join(todo)} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with progress.step(f"apt-get install {' '.join(todo)}"):
        if (
            run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo],
                env=env,
                check=False,
                timeout=1200,
            ).returncode
            != 0
        ):
            # A fresh machine has empty package lists.
            run(["apt-get", "update", "-qq"], env=env, timeout=600)
            run(
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *todo],
                env=env,
                timeout=1200,
            )
