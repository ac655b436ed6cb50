"""What the lab took on the host outside its state dir, recorded by `up` so that `down`
undoes exactly that: another cluster's chains, cgroups and kubelet root stay untouched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypedDict

from openxpu_lab.paths import write_atomic


class HostClaims(TypedDict):
    # True from the first `up` until a `down` has removed what the lab made.
    active: bool
    # KUBE-*/CNI-* chains ("tool table chain") already on the host before the lab's first
    # `up`: never the lab's to remove.
    foreign_chains: list[str]
    # The kubelet root and cgroup root the lab claimed, if it did.
    kubelet_root: str | None
    cgroup_root: str | None


def load(path: Path) -> HostClaims:
    try:
        claims: HostClaims = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"active": False, "foreign_chains": [], "kubelet_root": None, "cgroup_root": None}
    return claims


def save(path: Path, claims: HostClaims) -> None:
    write_atomic(path, (json.dumps(claims, indent=2) + "\n").encode(), mode=0o600)
