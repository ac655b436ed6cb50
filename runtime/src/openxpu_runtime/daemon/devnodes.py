"""Device nodes /dev/xpuN: character devices on a real host, plain files in a test root."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Literal

# From Linux's "local/experimental use" character major range (240-254). The kernel hands
# out dynamic majors from 254 downwards in the same range, so it is checked, never assumed.
XPU_MAJOR = 241
PROC_DEVICES = Path("/proc/devices")
# Owner and group only: who else may open a device is the container runtime's business
# (device cgroup, CDI), not a world-writable node. Set with chmod: mknod applies the umask.
NODE_MODE = 0o660

NodeKind = Literal["char", "file", "none"]


class DevNodeError(OSError):
    """The device nodes cannot be made safely."""


def default_kind() -> NodeKind:
    return "char" if os.geteuid() == 0 else "file"


def character_majors(proc_devices: Path = PROC_DEVICES) -> dict[int, str]:
    """The character majors the kernel has given to drivers, from /proc/devices."""
    majors: dict[int, str] = {}
    in_section = False
    for line in proc_devices.read_text().splitlines():
        if line.strip().endswith("devices:"):
            in_section = line.strip() == "Character devices:"
        elif in_section and (fields := line.split(maxsplit=1)) and fields[0].isdigit():
            majors.setdefault(int(fields[0]), fields[1] if len(fields) > 1 else "")
    return majors


def create(
    device_dir: Path, count: int, kind: NodeKind, proc_devices: Path = PROC_DEVICES
) -> list[Path]:
    if kind == "none":
        return []
    if kind == "char" and (owner := character_majors(proc_devices).get(XPU_MAJOR)) is not None:
        raise DevNodeError(
            f"character major {XPU_MAJOR} belongs to the kernel's {owner!r} driver "
            f"({proc_devices}); /dev/xpuN nodes with it would open that driver, so none are made"
        )
    device_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = device_dir / f"xpu{index}"
        if kind == "char":
            wanted = os.makedev(XPU_MAJOR, index)
            if path.exists() and not (
                stat.S_ISCHR(path.stat().st_mode) and path.stat().st_rdev == wanted
            ):
                path.unlink()
            if not path.exists():
                os.mknod(path, NODE_MODE | stat.S_IFCHR, wanted)
        else:
            path.touch(exist_ok=True)
        os.chmod(path, NODE_MODE)
        paths.append(path)
    return paths


def remove(device_dir: Path) -> None:
    for path in device_dir.glob("xpu[0-9]*"):
        if path.name[3:].isdigit():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
