"""Device health from xpud's event stream, into the resource manager.

A device that turns Unhealthy or Lost is re-sent as Unhealthy at once; one that recovers is
re-sent as Healthy. If xpud is unreachable every device is reported Unhealthy (nothing can
vouch for them) and the watcher reconnects with capped exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

from openxpu_device_plugin.config import HealthChecks
from openxpu_device_plugin.resources import SCHEDULABLE, ResourceManager
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import Unreachable, XpuError
from openxpu_runtime.faults import HEALTH_BY_SEVERITY, Health, UnknownFaultError, lookup

log = logging.getLogger(__name__)

InventoryHook = Callable[[api.Inventory], Awaitable[None]]


class _StaleInventory(Exception):
    """xpud named a device we do not know: re-read the inventory."""


class Backoff:
    def __init__(self, initial: float = 0.1, cap: float = 5.0) -> None:
        self.initial, self.cap = initial, cap
        self.delay = initial

    def reset(self) -> None:
        self.delay = self.initial

    def next(self) -> float:
        # Full jitter around the current step, so many nodes do not retry in lockstep.
        d = self.delay * random.uniform(0.5, 1.0)
        self.delay = min(self.delay * 2, self.cap)
        return d


async def without_ignored(
    client: AsyncXpudClient, event: api.Event, ignored: frozenset[int]
) -> tuple[str, str]:
    """The device's health and reason as if the `ignored` fault codes had not happened."""
    telemetry = await client.telemetry()
    device = next((d for d in telemetry.devices if d.uuid == event.device_uuid), None)
    if device is None:
        return event.health, event.reason
    counted = [f for f in device.active_faults if f.code not in ignored]
    if len(counted) == len(device.active_faults):
        return device.health, device.health_reason
    if not counted:
        codes = ", ".join(str(f.code) for f in device.active_faults)
        return Health.HEALTHY.value, f"ignoring fault {codes} (disableHealthChecks)"
    try:
        worst = max(lookup(f.code).severity for f in counted)
    except UnknownFaultError:
        return device.health, device.health_reason  # a newer xpud's code: trust its verdict
    return HEALTH_BY_SEVERITY[worst].value, "; ".join(f"{f.code} {f.name}" for f in counted)


class HealthWatcher:
    def __init__(
        self,
        rm: ResourceManager,
        socket: Path,
        on_inventory: InventoryHook | None = None,
        backoff: Backoff | None = None,
        checks: Callable[[], HealthChecks] = HealthChecks,
    ) -> None:
        self.rm = rm
        self.socket = socket
        # Read at each event; resync() re-judges every device under new settings.
        self.checks = checks
        self.on_inventory = on_inventory
        self.backoff = backoff or Backoff()
        self._session_task: asyncio.Future[None] | None = None

    def resync(self) -> None:
        """Start a new session: the stream opens with every device's health, judged afresh."""
        if self._session_task is not None:
            self._session_task.cancel()

    async def run(self) -> None:
        while True:
            self._session_task = asyncio.ensure_future(self._session())
            try:
                await self._session_task
            except _StaleInventory as exc:
                log.info("%s", exc)
                continue
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # this watcher is being stopped, not resynced
                continue
            except (Unreachable, XpuError) as exc:
                self._lost(str(exc))
            except OSError as exc:  # a socket error httpx did not wrap
                self._lost(f"cannot reach xpud at {self.socket}: {exc}")
            await asyncio.sleep(self.backoff.next())

    def _lost(self, reason: str) -> None:
        if self.rm.reachable:
            log.error("xpud unreachable, reporting every device Unhealthy: %s", reason)
        self.rm.set_unreachable(reason)

    async def _session(self) -> None:
        async with AsyncXpudClient(self.socket) as client:
            inventory = await client.inventory()
            self.rm.set_inventory(inventory.devices)
            if self.on_inventory is not None:
                await self.on_inventory(inventory)
            log.info("xpud: %d devices on %s", len(inventory.devices), inventory.node)
            self.backoff.reset()
            async for event in client.events():
                if not self.rm.knows(event.device_uuid):
                    # A device we have not seen: the inventory changed under us; re-read it.
                    raise _StaleInventory(f"new device {event.device_uuid}: re-reading inventory")
                health, reason = event.health, event.reason
                ignored = self.checks().ignored_fault_codes
                if ignored and health not in SCHEDULABLE:
                    health, reason = await without_ignored(client, event, ignored)
                if self.rm.set_health(event.device_uuid, health, reason):
                    log.warning(
                        "xpu %d (%s) is now %s%s",
                        event.device_index,
                        event.device_uuid,
                        health,
                        f": {reason}" if reason else "",
                    )
