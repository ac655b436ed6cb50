"""Leftovers of containers after their processes are gone: mounts, netns, cgroups."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from openxpu_lab.shell import run

CGROUP_V1 = Path("/sys/fs/cgroup")
# The lab's kubelet (cgroupfs driver) puts its pods under this cgroup root, not the usual
# /kubepods, so another kubelet's pods on the host are never taken for the lab's.
CGROUP_ROOT = "openxpu-lab"


def mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == prefix or mp.startswith(prefix + "/"):
            found.append(mp)
    return found


def unmount_under(root: Path) -> int:
    """Unmount everything below `root`, deepest first. Returns how many were unmounted."""
    count = 0
    for _ in range(5):
        mps = sorted(set(mounts_under(root)), key=lambda m: m.count("/"), reverse=True)
        if not mps:
            break
        for mp in mps:
            if run(["umount", mp], check=False).returncode != 0:
                run(["umount", "-l", mp], check=False)
            count += 1
    return count


def _hierarchies() -> list[Path]:
    """The host's cgroup v1 hierarchies (cpu, memory, pids, name=systemd, ...)."""
    if not CGROUP_V1.is_dir():
        return []
    return [
        h
        for h in sorted(CGROUP_V1.iterdir())
        if h.is_dir() and not h.is_symlink() and h.name != "unified"
    ]


def cgroup_dirs(name: str = CGROUP_ROOT) -> list[Path]:
    return [h / name for h in _hierarchies() if (h / name).is_dir()]


def ensure_cgroup_root(name: str = CGROUP_ROOT) -> None:
    """The kubelet refuses a cgroupRoot that does not exist in every hierarchy."""
    for h in _hierarchies():
        d = h / name
        d.mkdir(exist_ok=True)
        # A new cpuset cgroup starts with no CPUs or memory nodes: give it the parent's.
        for knob in ("cpuset.cpus", "cpuset.mems"):
            if (d / knob).exists() and not (d / knob).read_text().strip():
                (d / knob).write_text((h / knob).read_text())


def cgroup_pids(name: str = CGROUP_ROOT) -> list[int]:
    pids: set[int] = set()
    for base in cgroup_dirs(name):
        for procs_file in base.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(x) for x in procs_file.read_text().split())
    return sorted(pids)


def kill_cgroup(name: str = CGROUP_ROOT) -> int:
    """Backstop for containers whose shim is already gone: SIGKILL what is left in the lab's
    cgroup root."""
    killed = 0
    for _ in range(20):
        pids = cgroup_pids(name)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.2)
    return killed


def remove_cgroup(name: str = CGROUP_ROOT) -> int:
    removed = 0
    for base in cgroup_dirs(name):
        dirs = sorted(
            (p for p in base.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        )
        for d in [*dirs, base]:
            with contextlib.suppress(OSError):
                d.rmdir()
                removed += 1
    return removed


def shim_pids(socket: Path) -> list[int]:
    """containerd-shim processes serving our containerd (named by its socket path)."""
    found = []
    needle = str(socket).encode()
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            cmd = (p / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmd and needle in cmd:
            found.append(int(p.name))
    return found


def kill_shims(socket: Path) -> int:
    pids = shim_pids(socket)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


def worker_cgroup_roots() -> list[str]:
    """Cgroup roots of worker nodes' kubelets (`openxpu-lab-w<k>`) in any hierarchy."""
    return sorted(
        {d.name for h in _hierarchies() for d in h.glob(f"{CGROUP_ROOT}-w*") if d.is_dir()}
    )
