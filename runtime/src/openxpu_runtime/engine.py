"""The management engine of one node: devices, client contexts, memory, work, faults, events.

Everything here is synchronous and runs on one event loop, which is what makes concurrent
clients safe: no request ever sees another half-applied.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from openxpu_runtime import __version__, api
from openxpu_runtime.clock import Clock
from openxpu_runtime.device import Device, Work
from openxpu_runtime.errors import (
    DeviceUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfMemory,
    QuotaExceeded,
)
from openxpu_runtime.faults import Health, lookup
from openxpu_runtime.profiles import Profile, device_uuid
from openxpu_runtime.state import (
    ClientContext,
    NodeState,
    Record,
    StateStore,
    restore_state,
    snapshot_state,
)

Listener = Callable[[api.Event], None]
# The journal is folded into a fresh snapshot after this many records (and at every
# periodic save), which bounds both its size and the replay at startup.
COMPACT_AFTER_RECORDS = 10_000


@dataclass(frozen=True)
class Limits:
    """What one client may hold, so a runaway or crashed one cannot exhaust the node."""

    # A context opened without a lease gets this one; every call on it renews it.
    default_lease_seconds: float = 300.0
    max_contexts: int = 1024
    max_allocations_per_context: int = 16_384
    max_queued_launches_per_context: int = 4096


class Engine:
    def __init__(
        self,
        *,
        node: str,
        profile: Profile,
        clock: Clock,
        seed: int = 0,
        driver_version: str | None = None,
        store: StateStore | None = None,
        device_dir: Path = Path("/dev"),
        utilization_window: float = 1.0,
        limits: Limits = Limits(),
    ) -> None:
        self.node = node
        self.profile = profile
        self.clock = clock
        self.store = store
        self.device_dir = device_dir
        self.window = utilization_window
        self.limits = limits
        # Physics, fault recovery and leases run on model time, which a step of the wall
        # clock does not move; timestamps people read are wall time.
        now = clock.monotonic()
        self.devices = [
            Device.fresh(i, device_uuid(node, i), profile, seed, now) for i in range(profile.count)
        ]
        self._by_uuid = {d.uuid: d for d in self.devices}
        self.contexts: dict[str, ClientContext] = {}
        self._listeners: list[Listener] = []
        self._seq = itertools.count(1)
        saved = store.load() if store else None
        self.driver_version = driver_version or (saved and saved["driver_version"]) or __version__
        if saved:
            self.contexts = restore_state(saved, self.devices, now, limits.default_lease_seconds)
        # Energy as last written to the journal: exposed values are journalled before
        # they are shown, so the counter never goes back across a crash.
        self._journalled_energy = {d.uuid: d.energy for d in self.devices}
        if store:
            store.save(self._snapshot())

    # -- persistence ----------------------------------------------------------------------

    def _snapshot(self) -> NodeState:
        return snapshot_state(
            self.node, self.profile.name, self.driver_version, self.devices, self.contexts.values()
        )

    def persist(self) -> None:
        """Compact: a full snapshot, written off the event loop."""
        if self.store:
            self.store.compact(self._snapshot())

    def _journal(self, record: Record) -> None:
        if self.store:
            self.store.append(record)
            if self.store.records_since_compaction >= COMPACT_AFTER_RECORDS:
                self.persist()

    def _journal_device(self, dev: Device) -> None:
        self._journal({"op": "device", "device": dev.to_state()})
        self._journalled_energy[dev.uuid] = dev.energy

    def _expose_energy(self, devices: Iterable[Device]) -> None:
        """Journal the energy counters about to be shown, where they moved."""
        moved = {d.uuid: d.energy for d in devices if d.energy > self._journalled_energy[d.uuid]}
        if moved:
            self._journal({"op": "energy", "energy": moved})
            self._journalled_energy.update(moved)

    # -- events ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _emit(
        self,
        dev: Device,
        type_: Literal["health", "fault"],
        previous: Health | None,
        code: int | None,
    ) -> None:
        event = api.Event(
            seq=next(self._seq),
            time=self.clock.now(),
            type=type_,
            device_index=dev.index,
            device_uuid=dev.uuid,
            health=dev.health.value,
            previous_health=previous.value if previous else None,
            code=code,
            reason=dev.health_reason() if dev.faults else "",
        )
        for listener in list(self._listeners):
            listener(event)

    def _after_fault_change(self, dev: Device, before: Health, code: int, raised: bool) -> None:
        if raised:
            self._emit(dev, "fault", None, code)
        if dev.health is not before:
            self._emit(dev, "health", before, code)

    def snapshot_events(self) -> list[api.Event]:
        now = self.clock.now()
        return [
            api.Event(
                seq=0,
                time=now,
                type="snapshot",
                device_index=d.index,
                device_uuid=d.uuid,
                health=d.health.value,
                reason=d.health_reason(),
            )
            for d in self.devices
        ]

    # -- time -----------------------------------------------------------------------------

    def advance(self) -> None:
        """Bring every device up to now, apply what the physics raised, reap expired leases."""
        now = self.clock.monotonic()
        for dev in self.devices:
            before = dev.health
            changes = dev.advance(now)
            for change in changes:
                self._after_fault_change(dev, before, change.code, change.raised)
                before = dev.health
            if changes:
                self._journal_device(dev)
        for ctx in list(self.contexts.values()):
            if now - ctx.last_seen > ctx.lease_seconds:
                self._drop_context(ctx)

    # -- lookups --------------------------------------------------------------------------

    def device(self, ref: str) -> Device:
        if ref.isascii() and ref.isdigit():  # "²".isdigit() is True too
            index = int(ref)
            if index < len(self.devices):
                return self.devices[index]
        elif ref in self._by_uuid:
            return self._by_uuid[ref]
        raise NotFound(f"no device {ref!r} on node {self.node} ({len(self.devices)} devices)")

    def context(self, context_id: str) -> ClientContext:
        ctx = self.contexts.get(context_id)
        if ctx is None:
            raise NotFound(f"no context {context_id!r}")
        ctx.last_seen = self.clock.monotonic()
        return ctx

    def _visible(self, ctx: ClientContext, ref: str) -> Device:
        dev = self.device(ref)
        if dev.index not in ctx.devices:
            raise NotFound(f"device {ref!r} is not visible to context {ctx.id}")
        return dev

    @staticmethod
    def _usable(dev: Device) -> None:
        if not dev.operational:
            raise DeviceUnavailable(
                f"device {dev.uuid} is {dev.health.value}: {dev.health_reason()}", dev.uuid
            )

    # -- readings -------------------------------------------------------------------------

    def device_info(self, dev: Device) -> api.DeviceInfo:
        p = self.profile
        return api.DeviceInfo(
            index=dev.index,
            uuid=dev.uuid,
            product=p.product,
            family=p.family,
            memory_total_bytes=p.memory_bytes,
            compute_units=p.compute_units,
            max_clock_mhz=p.max_clock_mhz,
            peak_ops_per_second=p.throughput_ops(p.max_clock_mhz),
            tdp_watts=p.tdp_watts,
            link_group=p.link_group_of(dev.index),
            numa_node=p.numa_node_of(dev.index),
            device_path=str(self.device_dir / f"xpu{dev.index}"),
            health=dev.health.value,
        )

    def inventory(self) -> api.Inventory:
        self.advance()
        return api.Inventory(
            node=self.node,
            profile=self.profile.name,
            driver_version=self.driver_version,
            devices=[self.device_info(d) for d in self.devices],
        )

    def _processes_on(self, dev: Device) -> list[api.ProcessMemory]:
        return [
            api.ProcessMemory(
                context_id=c.id, pid=c.pid, name=c.name, memory_used_bytes=c.used_on(dev.index)
            )
            for c in self.contexts.values()
            if dev.index in c.devices
        ]

    def device_telemetry(self, dev: Device) -> api.DeviceTelemetry:
        self._expose_energy([dev])
        return self._reading(dev)

    def _reading(self, dev: Device) -> api.DeviceTelemetry:
        p = self.profile
        utilization, matrix_utilization, power = dev.readings(self.window)
        return api.DeviceTelemetry(
            index=dev.index,
            uuid=dev.uuid,
            health=dev.health.value,
            health_reason=dev.health_reason(),
            utilization_ratio=utilization,
            matrix_utilization_ratio=matrix_utilization,
            memory_total_bytes=p.memory_bytes,
            memory_used_bytes=dev.memory_used,
            memory_free_bytes=p.memory_bytes - dev.memory_used,
            temperature_celsius=None if dev.health is Health.LOST else dev.temperature,
            power_watts=power,
            power_limit_watts=p.tdp_watts,
            energy_joules=dev.energy,
            clock_mhz=dev.clock_mhz,
            max_clock_mhz=p.max_clock_mhz,
            memory_clock_mhz=0 if dev.health is Health.LOST else p.memory_clock_mhz,
            throttle_reasons=dev.throttle_reasons(utilization),
            ecc_corrected_total=dev.ecc_corrected,
            ecc_uncorrected_total=dev.ecc_uncorrected,
            errors_total={str(c): n for c, n in sorted(dev.errors.items())},
            last_error_code=dev.last_error_code,
            active_faults=[
                api.ActiveFault(
                    code=f["code"],
                    name=lookup(f["code"]).name,
                    severity=lookup(f["code"]).severity.name.lower(),
                    sticky=f["sticky"],
                    injected_at=f["injected_at"],
                    recover_at=f["recover_at"],
                    message=f["message"],
                )
                for f in dev.faults.values()
            ],
            pending_ops=dev.pending_ops(),
            processes=self._processes_on(dev),
        )

    def telemetry(self) -> api.Telemetry:
        self.advance()
        self._expose_energy(self.devices)
        return api.Telemetry(
            node=self.node,
            timestamp=self.clock.now(),
            driver_version=self.driver_version,
            devices=[self._reading(d) for d in self.devices],
        )

    # -- contexts and memory --------------------------------------------------------------

    def _context_view(self, ctx: ClientContext) -> api.Context:
        return api.Context(
            id=ctx.id,
            pid=ctx.pid,
            name=ctx.name,
            created_at=ctx.created_at,
            lease_seconds=ctx.lease_seconds,
            devices=[
                api.ContextDevice(
                    index=i,
                    uuid=self.devices[i].uuid,
                    memory_limit_bytes=ctx.limits.get(i),
                    memory_used_bytes=ctx.used_on(i),
                )
                for i in ctx.devices
            ],
        )

    def processes(self) -> list[api.Context]:
        self.advance()
        return [self._context_view(c) for c in self.contexts.values()]

    def get_context(self, context_id: str) -> api.Context:
        return self._context_view(self.context(context_id))

    def open_context(self, req: api.ContextRequest) -> api.Context:
        self.advance()
        indices: list[int] = []
        for ref in req.devices:
            dev = self.device(ref)
            if dev.index in indices:
                raise InvalidArgument(f"device {ref!r} is listed twice")
            indices.append(dev.index)
        limits: dict[int, int] = {}
        for ref, limit in req.memory_limits.items():
            dev = self.device(ref)
            if dev.index not in indices:
                raise InvalidArgument(f"memory limit for device {ref!r}, which is not requested")
            if limit <= 0:
                raise InvalidArgument(f"memory limit for device {ref!r} must be positive")
            limits[dev.index] = limit
        if len(self.contexts) >= self.limits.max_contexts:
            raise QuotaExceeded(
                f"xpud holds {len(self.contexts)} contexts, its limit (--max-contexts); "
                "close unused ones or wait for their leases to expire"
            )
        ctx = ClientContext(
            id=secrets.token_hex(8),
            pid=req.pid,
            name=req.name,
            created_at=self.clock.now(),
            lease_seconds=req.lease_seconds or self.limits.default_lease_seconds,
            last_seen=self.clock.monotonic(),
            devices=indices,
            limits=limits,
        )
        self.contexts[ctx.id] = ctx
        self._journal({"op": "context", "context": ctx.to_state(self.devices)})
        return self._context_view(ctx)

    def _drop_context(self, ctx: ClientContext) -> None:
        for index, size in ctx.allocations.values():
            self.devices[index].memory_used -= size
        for dev in self.devices:
            for work in [w for w in dev.queue if w.context_id == ctx.id]:
                dev.queue.remove(work)
        del self.contexts[ctx.id]
        self._journal({"op": "close", "id": ctx.id})

    def close_context(self, context_id: str) -> None:
        self._drop_context(self.context(context_id))

    def allocate(self, context_id: str, req: api.AllocationRequest) -> api.Allocation:
        self.advance()
        ctx = self.context(context_id)
        dev = self._visible(ctx, req.device)
        self._usable(dev)
        if len(ctx.allocations) >= self.limits.max_allocations_per_context:
            raise QuotaExceeded(
                f"context {ctx.id} holds {len(ctx.allocations)} allocations, the limit per "
                "context (--max-allocations); free some first"
            )
        limit = ctx.limits.get(dev.index)
        used = ctx.used_on(dev.index)
        if limit is not None and used + req.size > limit:
            raise OutOfMemory(
                f"out of memory on device {dev.uuid}: {req.size} bytes requested, "
                f"{limit - used} of this context's {limit}-byte limit free",
                dev.uuid,
            )
        free = self.profile.memory_bytes - dev.memory_used
        if req.size > free:
            raise OutOfMemory(
                f"out of memory on device {dev.uuid}: {req.size} bytes requested, {free} free",
                dev.uuid,
            )
        handle = secrets.token_hex(8)
        ctx.allocations[handle] = (dev.index, req.size)
        dev.memory_used += req.size
        self._journal(
            {
                "op": "alloc",
                "context": ctx.id,
                "handle": handle,
                "device": dev.uuid,
                "size": req.size,
            }
        )
        return api.Allocation(handle=handle, device_uuid=dev.uuid, size=req.size)

    def free(self, context_id: str, handle: str) -> None:
        ctx = self.context(context_id)
        try:
            index, size = ctx.allocations.pop(handle)
        except KeyError:
            raise NotFound(
                f"no allocation {handle!r} in context {context_id} (already freed?)"
            ) from None
        self.devices[index].memory_used -= size
        self._journal({"op": "free", "context": ctx.id, "handle": handle})

    # -- work -----------------------------------------------------------------------------

    def _estimate(self, dev: Device, ops: float) -> float:
        factor = self.profile.throttle_factor if dev.thermal_throttle else 1.0
        return ops / self.profile.throughput_ops(self.profile.max_clock_mhz * factor)

    def launch(self, context_id: str, req: api.LaunchRequest) -> api.LaunchResult:
        self.advance()
        ctx = self.context(context_id)
        dev = self._visible(ctx, req.device)
        self._usable(dev)
        queued = sum(w.context_id == ctx.id for i in ctx.devices for w in self.devices[i].queue)
        if queued >= self.limits.max_queued_launches_per_context:
            raise QuotaExceeded(
                f"context {ctx.id} has {queued} launches queued, the limit per context "
                "(--max-queued-launches); synchronize before launching more"
            )
        dev.queue.append(Work(ctx.id, req.ops, req.kind == "matrix"))
        pending = dev.pending_ops()
        return api.LaunchResult(
            device_uuid=dev.uuid, queued_ops=pending, estimated_seconds=self._estimate(dev, pending)
        )

    def synchronize(self, context_id: str, req: api.SyncRequest) -> api.SyncResult:
        self.advance()
        ctx = self.context(context_id)
        devices = (
            [self._visible(ctx, req.device)]
            if req.device
            else [self.devices[i] for i in ctx.devices]
        )
        for dev in devices:
            if dev.health is Health.LOST:
                raise DeviceUnavailable(
                    f"device {dev.uuid} was lost: {dev.health_reason()}", dev.uuid
                )
        pending = [(d, d.pending_ops(ctx.id)) for d in devices]
        return api.SyncResult(
            pending_ops=sum(p for _, p in pending),
            estimated_seconds=max(
                (self._estimate(d, d.pending_ops()) for d, p in pending if p), default=0.0
            ),
        )

    # -- faults ---------------------------------------------------------------------------

    def inject_fault(self, req: api.FaultRequest) -> api.FaultInjected:
        self.advance()
        dev = self.device(req.device)
        try:
            kind = lookup(req.code)
        except KeyError as exc:
            raise InvalidArgument(str(exc)) from None
        if (
            req.sticky is False
            and req.recover_after_seconds is None
            and kind.recover_after_seconds is None
        ):
            raise InvalidArgument(
                f"fault {kind.code} has no default recovery time; "
                "give recover_after_seconds or leave it sticky"
            )
        before = dev.health
        sticky = kind.sticky if req.sticky is None else req.sticky
        recover_after = req.recover_after_seconds or kind.recover_after_seconds
        dev.apply_fault(kind, self.clock.monotonic(), sticky, recover_after, req.message)
        self._after_fault_change(dev, before, kind.code, raised=True)
        self._journal_device(dev)
        return api.FaultInjected(
            device_uuid=dev.uuid,
            code=kind.code,
            name=kind.name,
            severity=kind.severity.name.lower(),
            health=dev.health.value,
        )

    def clear_faults(self, ref: str, code: int | None) -> api.FaultsCleared:
        self.advance()
        dev = self.device(ref)
        if code is not None and code not in dev.faults:
            raise FailedPrecondition(f"fault {code} is not active on device {dev.index}")
        before = dev.health
        cleared = sorted(dev.faults) if code is None else [code]
        for c in cleared:
            del dev.faults[c]
        if dev.health is not before:
            self._emit(dev, "health", before, cleared[-1] if cleared else None)
        self._journal_device(dev)
        return api.FaultsCleared(device_uuid=dev.uuid, cleared=cleared, health=dev.health.value)
