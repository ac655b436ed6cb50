"""NVIDIA's names in XPU containers: the driver's libnvidia-ml.so.1 and nvidia-smi, mounted
where NVIDIA's container toolkit puts them, so an unmodified image with nvidia-ml-py (or a
script calling nvidia-smi) works in an XPU pod. Nothing is mounted unless the driver
installed them (`xpu-driver install --nvidia-compat`, the default) and `flags.nvidiaCompat`
is on: a missing host path would make the container runtime refuse the container.
"""

from __future__ import annotations

import functools
import os
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from openxpu_device_plugin.config import Flags

if TYPE_CHECKING:  # cdi imports resources, which imports this module
    from openxpu_device_plugin.cdi import CdiMount, CdiSpec

LIBRARY = "libnvidia-ml.so.1"
# The multiarch directory of Debian and Ubuntu images: the loader searches it without an
# ld.so.cache entry, so no ldconfig hook is needed (NVIDIA's toolkit runs one).
CONTAINER_LIBRARY = f"/usr/lib/x86_64-linux-gnu/{LIBRARY}"
CONTAINER_SMI = "/usr/bin/nvidia-smi"


def mounts(flags: Flags) -> list[tuple[str, str]]:
    """(container path, host path) pairs, all read-only; none when compatibility is off or
    the driver did not install it (looked at on each call: Allocate's). The driver root
    itself is mounted at its host path: the nvidia-smi shim runs xpu-smi's code from there."""
    if not flags.nvidia_compat:
        return []
    root, library, smi = _host_paths(flags.driver_root)
    if not os.path.isfile(library):
        return []
    return [(root, root), (CONTAINER_LIBRARY, library), (CONTAINER_SMI, smi)]


@functools.cache
def _host_paths(driver_root: str) -> tuple[str, str, str]:
    root = PurePosixPath(driver_root)
    return str(root), str(root / "lib" / LIBRARY), str(root / "bin" / "nvidia-smi")


def add_to_cdi(spec: CdiSpec, flags: Flags) -> CdiSpec:
    """The same mounts in the CDI spec's edits for every device, as NVIDIA's CDI spec carries
    its driver's files: what a container runtime injects with `openxpu.io/xpu=...`."""
    edits: list[CdiMount] = [
        {"hostPath": host, "containerPath": container, "options": ["ro", "nosuid", "nodev", "bind"]}
        for container, host in mounts(flags)
    ]
    if edits:
        spec.setdefault("containerEdits", {}).setdefault("mounts", []).extend(edits)
    return spec
