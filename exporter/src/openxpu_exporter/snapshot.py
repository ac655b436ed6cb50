"""Reading xpud: one telemetry snapshot plus what the exporter knows about its own health."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from openxpu_exporter.attribution import PodRef
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import XpuError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    telemetry: api.Telemetry
    # Product name per device UUID, from the inventory (telemetry does not repeat it).
    models: dict[str, str]
    read_at: float  # time.time() when read
    read_seconds: float  # how long reading it took


@dataclass
class ExporterState:
    """Everything a scrape renders. Mutated only by the event loop, read by the collector."""

    snapshot: Snapshot | None = None
    xpud_up: bool = False
    attribution: dict[str, tuple[PodRef, ...]] = field(default_factory=dict)
    # None: attribution is off; False: on but the kubelet did not answer the last time.
    podresources_up: bool | None = None
    errors: dict[str, int] = field(default_factory=lambda: {"xpud": 0, "podresources": 0})
    # Bumped whenever attribution changes, so cached label sets know when to rebuild.
    attribution_version: int = 0
    # Set by the first good read and kept: an exporter that later loses xpud stays in its
    # Service, so Prometheus keeps scraping the openxpu_exporter_xpud_up 0 that says so.
    ready: bool = False


class SnapshotReader:
    """Reads telemetry; re-reads the inventory only when the set of devices changes."""

    def __init__(self, client: AsyncXpudClient, state: ExporterState) -> None:
        self.client = client
        self.state = state
        self._models: dict[str, str] = {}

    async def refresh(self) -> Snapshot | None:
        started = time.perf_counter()
        try:
            telemetry = await self.client.telemetry()
            if any(d.uuid not in self._models for d in telemetry.devices):
                inventory = await self.client.inventory()
                self._models = {d.uuid: d.product for d in inventory.devices}
        except XpuError as exc:
            self._unreadable(f"xpud unreadable, device metrics withheld: {exc}")
            return None
        except Exception as exc:
            # Anything else (say, a newer xpud's answer this client cannot parse) is as much
            # an outage: serving the last snapshot with xpud_up 1 would hide it.
            self._unreadable(
                f"xpud's answer could not be read, device metrics withheld: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            )
            return None
        snapshot = Snapshot(
            telemetry=telemetry,
            models=self._models,
            read_at=time.time(),
            read_seconds=time.perf_counter() - started,
        )
        self.state.snapshot = snapshot
        self.state.xpud_up = True
        self.state.ready = True
        return snapshot

    def _unreadable(self, why: str) -> None:
        # Stale readings would look like a healthy device; serve none and say why instead.
        if self.state.xpud_up or self.state.snapshot is not None:
            log.warning("%s", why)
        self.state.errors["xpud"] += 1
        self.state.xpud_up = False
        self.state.snapshot = None
