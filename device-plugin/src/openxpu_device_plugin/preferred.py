"""Topology-aware preferred allocation, as pure functions over device facts.

Whole devices: fewest link groups first (devices in one link group talk over the fast
fabric), then one NUMA node, and a group that fits the request exactly is preferred to
breaking into a bigger one, so large requests still find a whole group later.
Shared replicas: `distributed` spreads over the least-used devices, `packed` fills the
most-used device first; both keep to the same link group when a request spans devices.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from openxpu_device_plugin.config import AllocationPolicy


@dataclass(frozen=True)
class Candidate:
    """One advertised ID and where its device sits."""

    id: str
    device: int  # device index: replicas of one device share it
    link_group: int
    numa_node: int
    replica: int = 0


def _ordered_unique(ids: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def choose_devices(available: Sequence[Candidate], must: Sequence[str], size: int) -> list[str]:
    """Whole devices: `must` first, then whole link groups, best fit."""
    by_id = {c.id: c for c in available}
    chosen = [i for i in _ordered_unique(must) if i in by_id][:size]
    taken = set(chosen)
    free: dict[int, list[Candidate]] = defaultdict(list)
    for c in sorted(available, key=lambda c: c.device):
        if c.id not in taken:
            free[c.link_group].append(c)
    while len(chosen) < size and free:
        need = size - len(chosen)
        used_groups = {by_id[i].link_group for i in chosen}
        used_numa = {by_id[i].numa_node for i in chosen}

        group = min(free, key=lambda g: _group_rank(g, free[g], need, used_groups, used_numa))
        picked = free.pop(group)[:need]
        chosen.extend(c.id for c in picked)
    return chosen


def choose_replicas(
    available: Sequence[Candidate],
    must: Sequence[str],
    size: int,
    replicas_per_device: int,
    policy: AllocationPolicy,
) -> list[str]:
    """Shared replicas: spread (`distributed`) or pack (`packed`), must-include first."""
    by_id = {c.id: c for c in available}
    chosen = [i for i in _ordered_unique(must) if i in by_id][:size]
    taken = set(chosen)
    free: dict[int, list[Candidate]] = defaultdict(list)
    for c in sorted(available, key=lambda c: (c.device, c.replica)):
        if c.id not in taken:
            free[c.device].append(c)
    # Replicas not offered to us are in use by other containers.
    in_use = {d: replicas_per_device - len(cs) for d, cs in free.items()}
    picked_per_device: Counter[int] = Counter(by_id[i].device for i in chosen)
    while len(chosen) < size and free:
        groups = {by_id[i].link_group for i in chosen}

        device = min(
            free,
            key=lambda d: _replica_rank(
                d, free[d][0].link_group, in_use[d], picked_per_device[d], groups, policy
            ),
        )
        c = free[device].pop(0)
        if not free[device]:
            del free[device]
        chosen.append(c.id)
        picked_per_device[device] += 1
    return chosen


def _group_rank(
    group: int, free: list[Candidate], need: int, used_groups: set[int], used_numa: set[int]
) -> tuple[int, int, int, int, int]:
    n = len(free)
    fits = n >= need
    return (
        0 if group in used_groups else 1,  # stay where the request already is
        0 if fits else 1,  # one group that holds the rest
        n if fits else -n,  # best fit if it fits, else the biggest piece
        0 if not used_numa or free[0].numa_node in used_numa else 1,
        group,
    )


def _replica_rank(
    device: int,
    link_group: int,
    in_use: int,
    picked: int,
    groups: set[int],
    policy: AllocationPolicy,
) -> tuple[int, int, int, int]:
    load = in_use + picked
    same_group = 0 if not groups or link_group in groups else 1
    if policy is AllocationPolicy.PACKED:
        return (same_group, -load, 0, device)
    # distributed: a device this request already uses comes last, then the least loaded
    return (picked, same_group, load, device)
