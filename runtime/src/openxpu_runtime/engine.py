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
    PermissionDenied,
    QuotaExceeded,
)
from openxpu_runtime.faults import Health, lookup
from openxpu_runtime.profiles import Profile, device_uuid
from openxpu_runtime.state import (
    ClientContext,
    NodeState,
    Record,
    Scope,
    StateStore,
    restore_scopes,
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
    # One allocation (a container) must not be able to take every context of the node.
    max_contexts_per_scope: int = 256
    max_scopes: int = 4096


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
        self.scopes: dict[str, Scope] = {}
        self._listeners: list[Listener] = []
        self._seq = itertools.count(1)
        saved = store.load() if store else None
        self.driver_version = driver_version or (saved and saved["driver_version"]) or __version__
        if saved:
            self.contexts = restore_state(saved, self.devices, now, limits.default_lease_seconds)
            self.scopes = restore_scopes(saved, self.devices)
        # Energy as last written to the journal: exposed values are journalled before
        # they are shown, so the counter never goes back across a crash.
        self._journalled_energy = {d.uuid: d.energy for d in self.devices}
        if store:
            store.save(self._snapshot())

    # -- persistence ----------------------------------------------------------------------

    def _snapshot(self) -> NodeState:
        return snapshot_state(
            self.node,
            self.profile.name,
            self.driver_version,
            self.devices,
            self.contexts.values(),
            self.scopes.values(),
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

    def snapshot_events(self, scope: Scope | None = None) -> list[api.Event]:
        now = self.clock.now()
        return [
            api.Event(
                seq=0,
                time=now,
                type="snapshot",
                device_index=self.local_index(d, scope),
                device_uuid=d.uuid,
                health=d.health.value,
                reason=d.health_reason(),
            )
            for d in self.devices_of(scope)
        ]

    def event_for(self, event: api.Event, scope: Scope | None) -> api.Event | None:
        """`event` as `scope` sees it; None if it is about a device the scope does not have."""
        if scope is None:
            return event
        if event.device_index not in scope.devices:
            return None
        return event.model_copy(update={"device_index": scope.devices.index(event.device_index)})

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

    # A caller is the admin socket (scope None: every device, host indices) or one scope
    # (its devices only, numbered 0..n-1 in the order it was given them).

    def devices_of(self, scope: Scope | None) -> list[Device]:
        return self.devices if scope is None else [self.devices[i] for i in scope.devices]

    @staticmethod
    def local_index(dev: Device, scope: Scope | None) -> int:
        return dev.index if scope is None else scope.devices.index(dev.index)

    def device(self, ref: str, scope: Scope | None = None) -> Device:
        devices = self.devices_of(scope)
        if ref.isascii() and ref.isdigit():  # "²".isdigit() is True too
            index = int(ref)
            if index < len(devices):
                return devices[index]
        elif ref in self._by_uuid:
            dev = self._by_uuid[ref]
            if scope is None or dev.index in scope.devices:
                return dev
        where = f"node {self.node}" if scope is None else "this allocation"
        raise NotFound(f"no device {ref!r} on {where} ({len(devices)} devices)")

    def context(self, context_id: str, scope: Scope | None = None) -> ClientContext:
        ctx = self.contexts.get(context_id)
        # Another allocation's context does not exist for a scope: not even its id leaks.
        if ctx is None or (scope is not None and ctx.scope != scope.id):
            raise NotFound(f"no context {context_id!r}")
        ctx.last_seen = self.clock.monotonic()
        return ctx

    def scope(self, scope_id: str) -> Scope:
        scope = self.scopes.get(scope_id)
        if scope is None:
            raise NotFound(f"no scope {scope_id!r}")
        return scope

    def caller(self, scope_id: str | None) -> Scope:
        """The scope a request arrived through; refused once the scope is deleted."""
        scope = self.scopes.get(scope_id) if scope_id else None
        if scope is None:
            raise PermissionDenied(f"scope {scope_id!r} was deleted: its allocation is gone")
        return scope

    def _visible(self, ctx: ClientContext, ref: str, scope: Scope | None) -> Device:
        dev = self.device(ref, scope)
        if dev.index not in ctx.devices:
            raise NotFound(f"device {ref!r} is not visible to context {ctx.id}")
        return dev

    def _scope_used(self, scope_id: str, index: int) -> int:
        return sum(c.used_on(index) for c in self.contexts.values() if c.scope == scope_id)

    @staticmethod
    def _usable(dev: Device) -> None:
        if not dev.operational:
            raise DeviceUnavailable(
                f"device {dev.uuid} is {dev.health.value}: {dev.health_reason()}", dev.uuid
            )

    # -- readings -------------------------------------------------------------------------

    def _memory(self, dev: Device, scope: Scope | None) -> tuple[int, int, int]:
        """(total, used, free) bytes as the caller sees them: a shared replica's slice is
        its limit and what its own allocation uses, like memory in a vGPU or HAMi container."""
        total = self.profile.memory_bytes
        device_free = total - dev.memory_used
        limit = scope.limits.get(dev.index) if scope else None
        if scope is None or limit is None:
            return total, dev.memory_used, device_free
        used = self._scope_used(scope.id, dev.index)
        return limit, used, max(0, min(limit - used, device_free))

    def device_info(self, dev: Device, scope: Scope | None = None) -> api.DeviceInfo:
        p = self.profile
        return api.DeviceInfo(
            index=self.local_index(dev, scope),
            uuid=dev.uuid,
            product=p.product,
            family=p.family,
            memory_total_bytes=self._memory(dev, scope)[0],
            compute_units=p.compute_units,
            max_clock_mhz=p.max_clock_mhz,
            peak_ops_per_second=p.throughput_ops(p.max_clock_mhz),
            tdp_watts=p.tdp_watts,
            link_group=p.link_group_of(dev.index),
            numa_node=p.numa_node_of(dev.index),
            device_path=str(self.device_dir / f"xpu{dev.index}"),
            health=dev.health.value,
        )

    def inventory(self, scope: Scope | None = None) -> api.Inventory:
        self.advance()
        return api.Inventory(
            node=self.node,
            profile=self.profile.name,
            driver_version=self.driver_version,
            devices=[self.device_info(d, scope) for d in self.devices_of(scope)],
        )

    def _contexts_of(self, scope: Scope | None) -> list[ClientContext]:
        if scope is None:
            return list(self.contexts.values())
        return [c for c in self.contexts.values() if c.scope == scope.id]

    def _processes_on(self, dev: Device, scope: Scope | None) -> list[api.ProcessMemory]:
        return [
            api.ProcessMemory(
                context_id=c.id, pid=c.pid, name=c.name, memory_used_bytes=c.used_on(dev.index)
            )
            for c in self._contexts_of(scope)
            if dev.index in c.devices
        ]

    def device_telemetry(self, dev: Device, scope: Scope | None = None) -> api.DeviceTelemetry:
        self._expose_energy([dev])
        return self._reading(dev, scope)

    def _reading(self, dev: Device, scope: Scope | None) -> api.DeviceTelemetry:
        p = self.profile
        utilization, matrix_utilization, power = dev.readings(self.window)
        total, used, free = self._memory(dev, scope)
        return api.DeviceTelemetry(
            index=self.local_index(dev, scope),
            uuid=dev.uuid,
            health=dev.health.value,
            health_reason=dev.health_reason(),
            utilization_ratio=utilization,
            matrix_utilization_ratio=matrix_utilization,
            memory_total_bytes=total,
            memory_used_bytes=used,
            memory_free_bytes=free,
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
            processes=self._processes_on(dev, scope),
        )

    def telemetry(self, scope: Scope | None = None) -> api.Telemetry:
        self.advance()
        devices = self.devices_of(scope)
        self._expose_energy(devices)
        return api.Telemetry(
            node=self.node,
            timestamp=self.clock.now(),
            driver_version=self.driver_version,
            devices=[self._reading(d, scope) for d in devices],
        )

    # -- contexts and memory --------------------------------------------------------------

    def _context_view(self, ctx: ClientContext, scope: Scope | None) -> api.Context:
        return api.Context(
            id=ctx.id,
            pid=ctx.pid,
            name=ctx.name,
            created_at=ctx.created_at,
            lease_seconds=ctx.lease_seconds,
            scope=ctx.scope,
            devices=[
                api.ContextDevice(
                    index=self.local_index(self.devices[i], scope),
                    uuid=self.devices[i].uuid,
                    memory_limit_bytes=ctx.limits.get(i),
                    memory_used_bytes=ctx.used_on(i),
                )
                for i in ctx.devices
            ],
        )

    def processes(self, scope: Scope | None = None) -> list[api.Context]:
        self.advance()
        return [self._context_view(c, scope) for c in self._contexts_of(scope)]

    def get_context(self, context_id: str, scope: Scope | None = None) -> api.Context:
        return self._context_view(self.context(context_id, scope), scope)

    def open_context(self, req: api.ContextRequest, scope: Scope | None = None) -> api.Context:
        self.advance()
        indices: list[int] = []
        for ref in req.devices:
            dev = self.device(ref, scope)
            if dev.index in indices:
                raise InvalidArgument(f"device {ref!r} is listed twice")
            indices.append(dev.index)
        limits: dict[int, int] = {}
        for ref, limit in req.memory_limits.items():
            dev = self.device(ref, scope)
            if dev.index not in indices:
                raise InvalidArgument(f"memory limit for device {ref!r}, which is not requested")
            if limit <= 0:
                raise InvalidArgument(f"memory limit for device {ref!r} must be positive")
            limits[dev.index] = limit
        if scope is not None:
            # The allocation's limit holds whatever the client asked for; a lower one is kept.
            for index, cap in scope.limits.items():
                if index in indices:
                    limits[index] = min(limits.get(index, cap), cap)
            held = len(self._contexts_of(scope))
            if held >= self.limits.max_contexts_per_scope:
                raise QuotaExceeded(
                    f"this allocation holds {held} contexts, the limit per allocation; "
                    "close unused ones or wait for their leases to expire"
                )
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
            scope=scope.id if scope else None,
        )
        self.contexts[ctx.id] = ctx
        self._journal({"op": "context", "context": ctx.to_state(self.devices)})
        return self._context_view(ctx, scope)

    def _drop_context(self, ctx: ClientContext) -> None:
        for index, size in ctx.allocations.values():
            self.devices[index].memory_used -= size
        for dev in self.devices:
            for work in [w for w in dev.queue if w.context_id == ctx.id]:
                dev.queue.remove(work)
        del self.contexts[ctx.id]
        self._journal({"op": "close", "id": ctx.id})

    def close_context(self, context_id: str, scope: Scope | None = None) -> None:
        self._drop_context(self.context(context_id, scope))

    def allocate(
        self, context_id: str, req: api.AllocationRequest, scope: Scope | None = None
    ) -> api.Allocation:
        self.advance()
        ctx = self.context(context_id, scope)
        dev = self._visible(ctx, req.device, scope)
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
        # The allocation's limit covers all its contexts together, not each one.
        owner = self.scopes.get(ctx.scope) if ctx.scope else None
        cap = owner.limits.get(dev.index) if owner else None
        if owner is not None and cap is not None:
            held = self._scope_used(owner.id, dev.index)
            if held + req.size > cap:
                raise OutOfMemory(
                    f"out of memory on device {dev.uuid}: {req.size} bytes requested, "
                    f"{cap - held} of this allocation's {cap}-byte limit free",
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

    def free(self, context_id: str, handle: str, scope: Scope | None = None) -> None:
        ctx = self.context(context_id, scope)
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

    def launch(
        self, context_id: str, req: api.LaunchRequest, scope: Scope | None = None
    ) -> api.LaunchResult:
        self.advance()
        ctx = self.context(context_id, scope)
        dev = self._visible(ctx, req.device, scope)
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

    def synchronize(
        self, context_id: str, req: api.SyncRequest, scope: Scope | None = None
    ) -> api.SyncResult:
        self.advance()
        ctx = self.context(context_id, scope)
        devices = (
            [self._visible(ctx, req.device, scope)]
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

    # -- scopes ---------------------------------------------------------------------------

    def create_scope(self, req: api.ScopeRequest) -> Scope:
        """One allocation's view of the node, from the device IDs the device plugin gave a
        container: whole devices (UUID or host index) or shared replicas (`<uuid>::<n>`,
        whose memory limits add up per device)."""
        self.advance()
        if len(self.scopes) >= self.limits.max_scopes:
            raise QuotaExceeded(
                f"xpud holds {len(self.scopes)} scopes, its limit; delete those whose "
                "containers are gone"
            )
        indices: list[int] = []
        limits: dict[int, int] = {}
        unlimited: set[int] = set()
        seen: set[str] = set()
        for entry in req.devices:
            if entry.id in seen:
                raise InvalidArgument(f"device ID {entry.id!r} is listed twice")
            seen.add(entry.id)
            ref, sep, replica = entry.id.partition("::")
            if sep and not (replica.isascii() and replica.isdigit()):
                raise InvalidArgument(f"{entry.id!r} is not a replica ID like <uuid>::<n>")
            dev = self.device(ref)
            if dev.index not in indices:
                indices.append(dev.index)
            if entry.memory_limit_bytes is None:
                unlimited.add(dev.index)
            else:
                limits[dev.index] = limits.get(dev.index, 0) + entry.memory_limit_bytes
        for index, limit in limits.items():
            uuid = self.devices[index].uuid
            if index in unlimited:
                raise InvalidArgument(
                    f"device {uuid}: some of its IDs have a memory limit, some not"
                )
            if limit > self.profile.memory_bytes:
                raise InvalidArgument(
                    f"memory limit {limit} for device {uuid} exceeds its "
                    f"{self.profile.memory_bytes} bytes"
                )
        scope = Scope(
            id=secrets.token_hex(8),
            created_at=self.clock.now(),
            device_ids=[e.id for e in req.devices],
            devices=indices,
            limits=limits,
            labels=dict(req.labels),
        )
        self.scopes[scope.id] = scope
        self._journal({"op": "scope", "scope": scope.to_state(self.devices)})
        return scope

    def delete_scope(self, scope_id: str) -> None:
        """The allocation is gone: so are its contexts, and the memory they held."""
        scope = self.scope(scope_id)
        for ctx in self._contexts_of(scope):
            self._drop_context(ctx)
        del self.scopes[scope.id]
        self._journal({"op": "unscope", "id": scope.id})

    def scope_view(self, scope: Scope, socket: str | None) -> api.Scope:
        return api.Scope(
            id=scope.id,
            created_at=scope.created_at,
            socket=socket,
            device_ids=scope.device_ids,
            devices=[
                api.ScopeDevice(
                    index=n,
                    host_index=i,
                    uuid=self.devices[i].uuid,
                    memory_limit_bytes=scope.limits.get(i),
                )
                for n, i in enumerate(scope.devices)
            ],
            labels=scope.labels,
            contexts=len(self._contexts_of(scope)),
        )
