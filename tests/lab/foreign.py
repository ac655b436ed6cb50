"""Stand-ins for another cluster on the same host: what its kube-proxy, CNI and kubelet
would leave there. The lab's `down` must leave all of it alone."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CGROUP_PIDS = Path("/sys/fs/cgroup/pids")


def tag() -> str:
    return uuid.uuid4().hex[:6].upper()


def chain_exists(table: str, chain: str) -> bool:
    probe = ["iptables", "-t", table, "-n", "-L", chain]
    return subprocess.run(probe, capture_output=True).returncode == 0


@contextmanager
def chains(table: str, *names: str) -> Iterator[list[str]]:
    """Empty chains of these names in `table`, removed on exit if still there."""
    for name in names:
        subprocess.run(["iptables", "-t", table, "-N", name], check=True)
    try:
        yield list(names)
    finally:
        for name in names:
            subprocess.run(["iptables", "-t", table, "-X", name], capture_output=True)


@contextmanager
def pods() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Sleepers in cgroups named like another kubelet's pods: under the top-level /kubepods
    a cgroupfs kubelet uses, and under a kubepods of another parent."""
    suffix = tag().lower()
    other = CGROUP_PIDS / f"other-{suffix}"
    cgroups = [CGROUP_PIDS / "kubepods" / f"foreign-{suffix}", other / "kubepods"]
    made_kubepods = not (CGROUP_PIDS / "kubepods").exists()
    sleepers = []
    try:
        for cgroup in cgroups:
            cgroup.mkdir(parents=True)
            proc = subprocess.Popen(["sleep", "600"])
            sleepers.append(proc)
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        yield sleepers
    finally:
        for proc in sleepers:
            proc.kill()
            proc.wait()
        for d in [*cgroups, other]:
            if d.exists():
                d.rmdir()
        if made_kubepods:
            (CGROUP_PIDS / "kubepods").rmdir()
