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

from openxpu_device_plugin.resources import ResourceManager
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import Unreachable, XpuError

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


class HealthWatcher:
    def __init__(
        self,
        rm: ResourceManager,
        socket: Path,
        on_inventory: InventoryHook | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.rm = rm
        self.socket = socket
        self.on_inventory = on_inventory
        self.backoff = backoff or Backoff()

    async def run(self) -> None:
        while True:
            try:
                await self._session()
            except _StaleInventory as exc:
                log.info("%s", exc)
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
                if self.rm.set_health(event.device_uuid, event.health, event.reason):
                    log.warning(
                        "xpu %d (%s) is now %s%s",
                        event.device_index,
                        event.device_uuid,
                        event.health,
                        f": {event.reason}" if event.reason else "",
                    )
