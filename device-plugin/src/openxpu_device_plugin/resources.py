"""The resource manager: which IDs this node advertises, their health, request validation,
what a container gets, and preferred allocation. No gRPC here: the server translates, and
asks xpud for each container's scope between `plan` and `container`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from openxpu_device_plugin import compat, preferred
from openxpu_device_plugin.config import Config, DeviceIDStrategy, DeviceListStrategy
from openxpu_runtime import api

CDI_KIND = "openxpu.io/xpu"
# Where workloads find xpud inside a container: the runtime's default socket path.
CONTAINER_RUN_DIR = "/run/openxpu"
REPLICA_SEP = "::"
# The label on each scope this plugin creates: the reconciler deletes only its own.
SCOPE_RESOURCE_LABEL = "resource"
# Spare scopes are made ahead for single-ID requests only while the node advertises no more
# IDs than this (many replicas would fill xpud's 4,096 scopes with spares).
MAX_SPARES = 256
# xpud's health words; Degraded still runs work, so the kubelet may schedule it.
SCHEDULABLE = frozenset({"Healthy", "Degraded"})


class AllocationError(ValueError):
    """A request the plugin refuses; the message says which ID and why."""


@dataclass(frozen=True)
class Xpu:
    """One physical device as the plugin needs it."""

    index: int
    uuid: str
    product: str
    family: str
    memory_total_bytes: int
    link_group: int
    numa_node: int
    device_path: str
    # The emulator may create device nodes as plain files; those are bind-mounted, because
    # a container runtime refuses a DeviceSpec that is not a character device.
    is_device_node: bool

    @classmethod
    def from_info(cls, info: api.DeviceInfo) -> Xpu:
        try:
            is_node = stat.S_ISCHR(os.stat(info.device_path).st_mode)
        except OSError:
            is_node = True  # not visible from here (another mount namespace): trust xpud
        return cls(
            index=info.index,
            uuid=info.uuid,
            product=info.product,
            family=info.family,
            memory_total_bytes=info.memory_total_bytes,
            link_group=info.link_group,
            numa_node=info.numa_node,
            device_path=info.device_path,
            is_device_node=is_node,
        )

    @functools.cached_property
    def container_path(self) -> str:
        return f"/dev/{PurePosixPath(self.device_path).name}"


@dataclass(frozen=True)
class Advertised:
    id: str
    healthy: bool
    numa_node: int


@dataclass(frozen=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class NodeSpec:
    container_path: str
    host_path: str
    permissions: str = "rw"


@dataclass
class ContainerAllocation:
    envs: dict[str, str] = field(default_factory=dict)
    mounts: list[MountSpec] = field(default_factory=list)
    devices: list[NodeSpec] = field(default_factory=list)
    cdi_devices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AllocationPlan:
    """One container request, checked: the scope to ask xpud for, and the devices in the
    order the scope will number them (0..n-1)."""

    scope_request: api.ScopeRequest
    xpus: list[Xpu]
    # XPU_MEMORY_LIMIT_<i> for shared replicas (None: a whole device), as xpud will enforce.
    memory_limits: list[int | None]


@dataclass(frozen=True)
class _Slot:
    """What one advertised ID stands for."""

    xpu: Xpu
    replica: int | None


class ResourceManager:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._xpus: list[Xpu] = []
        self._health: dict[str, str] = {}
        self._reason: dict[str, str] = {}
        self._reachable = False
        self._unreachable_reason = "xpud not contacted yet"
        self._slots: dict[str, _Slot] = {}
        self._socket_env = ""
        self.generation = 0
        self._changed = asyncio.Event()

    # -- state ----------------------------------------------------------------------------

    @property
    def xpus(self) -> list[Xpu]:
        return list(self._xpus)

    @property
    def reachable(self) -> bool:
        return self._reachable

    def knows(self, uuid: str) -> bool:
        return uuid in self._health

    def apply_config(self, config: Config) -> None:
        self._config = config
        self._rebuild()

    def set_inventory(self, devices: Iterable[api.DeviceInfo]) -> None:
        infos = sorted(devices, key=lambda d: d.index)
        self._xpus = [Xpu.from_info(d) for d in infos]
        self._health = {d.uuid: d.health for d in infos}
        self._reason = {}
        self._reachable = True
        self._rebuild()

    def set_health(self, uuid: str, health: str, reason: str = "") -> bool:
        """Record a device's health; True when its schedulability changed."""
        if uuid not in self._health:
            return False
        before = self._schedulable(uuid)
        self._health[uuid] = health
        self._reason[uuid] = reason
        if before != self._schedulable(uuid):
            self._notify()
            return True
        return False

    def set_unreachable(self, reason: str) -> None:
        """xpud is gone: nothing can be vouched for, so every device is Unhealthy."""
        self._unreachable_reason = reason
        if self._reachable:
            self._reachable = False
            self._notify()

    def _schedulable(self, uuid: str) -> bool:
        if self._config.health.all_disabled:
            return uuid in self._health  # known is enough: health checks are off
        return self._reachable and self._health.get(uuid) in SCHEDULABLE

    def _rebuild(self) -> None:
        # Allocate is the hot path: what depends only on config is computed here, once.
        sock = PurePosixPath(self._config.flags.xpud_socket)
        self._socket_env = f"{CONTAINER_RUN_DIR}/{sock.name}"
        slots: dict[str, _Slot] = {}
        for x in self._xpus:
            base = (
                x.uuid
                if self._config.flags.device_id_strategy is DeviceIDStrategy.UUID
                else str(x.index)
            )
            if self._config.shared:
                for n in range(self._config.replicas):
                    slots[f"{base}{REPLICA_SEP}{n}"] = _Slot(x, n)
            else:
                slots[base] = _Slot(x, None)
        self._slots = slots
        self._notify()

    def _notify(self) -> None:
        self.generation += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, generation: int) -> int:
        """Return the generation once it differs from `generation`."""
        while self.generation == generation:
            await self._changed.wait()
        return self.generation

    def advertised(self) -> list[Advertised]:
        return [
            Advertised(id=i, healthy=self._schedulable(s.xpu.uuid), numa_node=s.xpu.numa_node)
            for i, s in self._slots.items()
        ]

    # -- requests -------------------------------------------------------------------------

    def _slot(self, device_id: str) -> _Slot:
        slot = self._slots.get(device_id)
        if slot is None:
            known = ", ".join(list(self._slots)[:4]) + (", ..." if len(self._slots) > 4 else "")
            raise AllocationError(
                f"unknown device ID {device_id!r} for {self._config.advertised_resource} "
                f"(this node advertises {len(self._slots)}: {known or 'none'})"
            )
        if not self._schedulable(slot.xpu.uuid):
            if not self._reachable:
                why = f"xpud is unreachable ({self._unreachable_reason})"
            else:
                why = self._health.get(slot.xpu.uuid, "unknown")
                if self._reason.get(slot.xpu.uuid):
                    why += f": {self._reason[slot.xpu.uuid]}"
            raise AllocationError(
                f"device {device_id!r} (xpu {slot.xpu.index}) is Unhealthy ({why})"
            )
        return slot

    def plan(self, device_ids: Sequence[str]) -> AllocationPlan:
        """Check one container request and say which scope it needs; AllocationError if
        the plugin refuses it."""
        cfg = self._config
        if not device_ids:
            raise AllocationError("no device IDs in the container request")
        if len(set(device_ids)) != len(device_ids):
            raise AllocationError(f"duplicate device IDs in the request: {list(device_ids)}")
        if (
            cfg.shared
            and cfg.sharing.time_slicing.fail_requests_greater_than_one
            and len(device_ids) > 1
        ):
            raise AllocationError(
                f"request for '{cfg.advertised_resource}: {len(device_ids)}' too large: "
                "maximum request size for shared resources is 1"
            )
        slots = {i: self._slot(i) for i in device_ids}
        # Replicas of one device make one device of the scope; their memory adds up.
        per_device: dict[str, list[str]] = {}
        for device_id, s in slots.items():
            per_device.setdefault(s.xpu.uuid, []).append(device_id)
        entries: list[api.ScopeDeviceRequest] = []
        xpus: list[Xpu] = []
        limits: list[int | None] = []
        for ids in per_device.values():
            x = slots[ids[0]].xpu
            replica_limit = cfg.memory_limit_per_replica(x.memory_total_bytes)
            if replica_limit is None:
                entries += [api.ScopeDeviceRequest(id=i) for i in ids]
                limits.append(None)
            else:
                # The replicas' slices, never more than the device together (xpud refuses).
                total = min(replica_limit * len(ids), x.memory_total_bytes)
                share, rest = divmod(total, len(ids))
                entries += [
                    api.ScopeDeviceRequest(id=i, memory_limit_bytes=share + (1 if n < rest else 0))
                    for n, i in enumerate(ids)
                ]
                limits.append(total)
            xpus.append(x)
        request = api.ScopeRequest(
            devices=entries, labels={SCOPE_RESOURCE_LABEL: cfg.advertised_resource}
        )
        return AllocationPlan(request, xpus, limits)

    def spare_requests(self) -> dict[str, api.ScopeRequest]:
        """The scope a one-ID request would ask for, for every ID the kubelet may allocate
        now: what the spare-scope pool makes ahead, so Allocate need not wait for xpud."""
        if len(self._slots) > MAX_SPARES:
            return {}
        out = {}
        for device_id in self._slots:
            try:
                out[device_id] = self.plan([device_id]).scope_request
            except AllocationError:
                continue  # unhealthy: the kubelet will not allocate it
        return out

    def container(self, plan: AllocationPlan, scope: api.Scope) -> ContainerAllocation:
        """What the container gets: its scope's directory as its /run/openxpu (the only
        xpud socket it can reach), its device nodes, and the environment."""
        if scope.socket is None:
            raise AllocationError(f"xpud serves no socket for scope {scope.id}")
        strategies = set(self._config.flags.device_list_strategy)
        by_index = self._config.flags.device_id_strategy is DeviceIDStrategy.INDEX
        out = ContainerAllocation()
        # As the container sees them: the scope numbers its devices 0..n-1 (as nvidia-smi in
        # a GPU container does); UUIDs are the same everywhere.
        out.envs["XPU_VISIBLE_DEVICES"] = ",".join(
            str(d.index) if by_index else d.uuid for d in scope.devices
        )
        out.envs["XPUD_SOCKET"] = self._socket_env
        for i, limit in enumerate(plan.memory_limits):
            if limit is not None:
                out.envs[f"XPU_MEMORY_LIMIT_{i}"] = str(limit)
        out.mounts = self.container_mounts(os.path.dirname(scope.socket))
        if DeviceListStrategy.CDI in strategies:
            # The runtime injects the device nodes from the CDI spec; the kubelet adds the
            # mounts above next to them.
            out.cdi_devices = [f"{CDI_KIND}={x.uuid}" for x in plan.xpus]
            return out
        # NVIDIA's library and nvidia-smi; with CDI the spec's global edits carry them.
        out.mounts += [MountSpec(c, h, True) for c, h in compat.mounts(self._config.flags)]
        if DeviceListStrategy.DEVICE_SPECS in strategies:
            for x in plan.xpus:
                if x.is_device_node:
                    out.devices.append(NodeSpec(x.container_path, x.device_path))
                else:
                    out.mounts.append(MountSpec(x.container_path, x.device_path, False))
        return out

    def container_mounts(self, scope_dir: str) -> list[MountSpec]:
        """The host paths every XPU container gets, whatever the device-list strategy: its
        scope's directory, read-only (the socket inside still accepts connections). One
        place to add a mount to every XPU container."""
        return [MountSpec(CONTAINER_RUN_DIR, scope_dir, True)]

    def preferred(self, available: Sequence[str], must: Sequence[str], size: int) -> list[str]:
        """The IDs this plugin would pick; unknown IDs are ignored (the kubelet decides)."""
        cands = []
        for i in available:
            s = self._slots.get(i)
            if s is not None:
                cands.append(
                    preferred.Candidate(
                        i, s.xpu.index, s.xpu.link_group, s.xpu.numa_node, s.replica or 0
                    )
                )
        if self._config.shared:
            return preferred.choose_replicas(
                cands,
                must,
                size,
                self._config.replicas,
                self._config.sharing.time_slicing.allocation_policy,
            )
        return preferred.choose_devices(cands, must, size)
