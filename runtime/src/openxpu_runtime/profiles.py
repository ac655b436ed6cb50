"""Emulated hardware profiles: what one node's XPUs look like.

A profile is data; the operator's policy carries them per node pool and hands one to `xpud`.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

MIB = 1024 * 1024

# Fixed namespace so a device's UUID depends only on node name and index.
_UUID_NAMESPACE = uuid.UUID("6b0f3c56-4f43-4b7e-9a8e-0e1c5d0a7a01")


class ProfileError(ValueError):
    """A profile that cannot describe real hardware."""


@dataclass(frozen=True)
class Profile:
    name: str
    product: str
    family: str
    count: int
    memory_mib: int
    compute_units: int
    tdp_watts: float
    idle_watts: float
    link_groups: int
    numa_nodes: int
    max_clock_mhz: int = 1800
    idle_clock_mhz: int = 300
    memory_clock_mhz: int = 1600
    # Work throughput: operations per compute unit per clock cycle.
    ops_per_cu_cycle: int = 256
    ambient_celsius: float = 30.0
    # Steady-state temperature rise per watt, and the thermal time constant.
    thermal_resistance: float = 0.17
    thermal_tau_seconds: float = 20.0
    slowdown_celsius: float = 85.0
    shutdown_celsius: float = 95.0
    throttle_factor: float = 0.6
    power_noise_watts: float = 0.5

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.count < 0 or self.count > 1024:
            problems.append("count must be between 0 and 1024")
        for name in ("memory_mib", "compute_units", "link_groups", "numa_nodes"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1")
        if self.tdp_watts <= self.idle_watts or self.idle_watts < 0:
            problems.append("tdp_watts must exceed idle_watts >= 0")
        if self.count and self.count % self.link_groups:
            problems.append("count must be a multiple of link_groups")
        if not self.slowdown_celsius < self.shutdown_celsius:
            problems.append("slowdown_celsius must be below shutdown_celsius")
        if not 0 < self.throttle_factor <= 1:
            problems.append("throttle_factor must be in (0, 1]")
        if problems:
            raise ProfileError(f"profile {self.name!r}: " + "; ".join(problems))

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    def throughput_ops(self, clock_mhz: float) -> float:
        return self.compute_units * self.ops_per_cu_cycle * clock_mhz * 1e6

    def link_group_of(self, index: int) -> int:
        return index // (self.count // self.link_groups)

    def numa_node_of(self, index: int) -> int:
        return self.link_group_of(index) * self.numa_nodes // self.link_groups

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProfileError(f"unknown profile fields: {', '.join(unknown)}")
        missing = sorted(
            f.name for f in fields(cls) if f.name not in data and f.default is f.default_factory
        )
        if missing:
            raise ProfileError(f"profile is missing fields: {', '.join(missing)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ProfileError(str(exc)) from exc


def device_uuid(node: str, index: int) -> str:
    """Stable per node and index, in the shape users know from `GPU-…` UUIDs."""
    return f"XPU-{uuid.uuid5(_UUID_NAMESPACE, f'{node}/{index}')}"


BUILTIN: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="x1-2",
            product="OpenXPU X1 16GB",
            family="x1",
            count=2,
            memory_mib=16384,
            compute_units=32,
            tdp_watts=150,
            idle_watts=25,
            link_groups=1,
            numa_nodes=1,
        ),
        Profile(
            name="x1-8",
            product="OpenXPU X1 64GB",
            family="x1",
            count=8,
            memory_mib=65536,
            compute_units=96,
            tdp_watts=400,
            idle_watts=60,
            link_groups=2,
            numa_nodes=2,
            thermal_resistance=0.125,
        ),
        Profile(
            name="x2-64",
            product="OpenXPU X2 128GB",
            family="x2",
            count=64,
            memory_mib=131072,
            compute_units=128,
            tdp_watts=700,
            idle_watts=90,
            link_groups=8,
            numa_nodes=2,
            thermal_resistance=0.075,
        ),
    )
}

DEFAULT_PROFILE = "x1-2"


def load_profile(spec: str, count: int | None = None) -> Profile:
    """A built-in name, or a JSON file path; `count` overrides the device count."""
    if spec in BUILTIN:
        profile = BUILTIN[spec]
    else:
        path = Path(spec)
        if not path.is_file():
            known = ", ".join(sorted(BUILTIN))
            raise ProfileError(f"no built-in profile {spec!r} (known: {known}) and no such file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ProfileError(f"{path}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ProfileError(f"{path}: a profile is a JSON object")
        profile = Profile.from_dict(data)
    if count is not None:
        # Keep the topology valid: link groups must divide the device count.
        groups = math.gcd(profile.link_groups, count) or 1
        numa = min(profile.numa_nodes, groups)
        changes = {"count": count, "link_groups": groups, "numa_nodes": numa}
        profile = Profile.from_dict({**profile.to_dict(), **changes})
    return profile
