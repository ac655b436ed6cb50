"""Device nodes /dev/xpuN: character devices on a real host, plain files in a test root."""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Literal

# From Linux's "local/experimental use" character major range (240-254).
XPU_MAJOR = 241

NodeKind = Literal["char", "file", "none"]


def default_kind() -> NodeKind:
    return "char" if os.geteuid() == 0 else "file"


def create(device_dir: Path, count: int, kind: NodeKind) -> list[Path]:
    if kind == "none":
        return []
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
                os.mknod(path, 0o666 | stat.S_IFCHR, wanted)
        else:
            path.touch(exist_ok=True)
        paths.append(path)
    return paths


def remove(device_dir: Path) -> None:
    for path in device_dir.glob("xpu[0-9]*"):
        if path.name[3:].isdigit():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
