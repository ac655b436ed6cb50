"""Feature discovery: keep this node's `openxpu.io/*` labels equal to what xpud and the
configuration say, patching only this node (its name comes from the downward API).

Labels are recomputed when xpud (re)connects (a driver upgrade or restart may change the
devices), when the configuration file changes, and every `interval` as a safety net. While
xpud is unreachable the labels stay as they were: an outage is not "no XPUs".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from openxpu_device_plugin import labels
from openxpu_device_plugin.config import Config, ConfigError, ConfigSource, watch_config
from openxpu_device_plugin.health import Backoff
from openxpu_device_plugin.kube import KubeClient, KubeError, NodeName
from openxpu_device_plugin.supervise import supervise
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import XpuError

log = logging.getLogger(__name__)


class FeatureDiscovery:
    def __init__(
        self,
        source: ConfigSource,
        config: Config,
        kube: KubeClient,
        node: NodeName,
        interval: float = 60.0,
        config_poll: float = 2.0,
    ) -> None:
        self.source = source
        self.config = config
        self.kube = kube
        self.node = node
        self.interval = interval
        self.config_poll = config_poll
        self._wake = asyncio.Event()

    @property
    def socket(self) -> Path:
        return Path(self.config.flags.xpud_socket)

    async def label_once(self) -> dict[str, str | None]:
        """One pass; returns the patch it applied (empty when the node was current)."""
        async with AsyncXpudClient(self.socket) as xpud:
            inventory = await xpud.inventory()
        wanted = labels.compute(inventory, self.config)
        patch = labels.patch_for(await self.kube.node_labels(self.node), wanted)
        if patch:
            await self.kube.patch_node_labels(self.node, patch)
            log.info("labelled node %s: %s", self.node, patch)
        return patch

    def wake(self) -> None:
        self._wake.set()

    async def _watch_xpud(self) -> None:
        """Wake the labeller whenever xpud comes (back) with a different inventory; the
        event stream is only held open to notice xpud going away."""
        backoff = Backoff(initial=0.2, cap=10.0)
        seen: tuple[str, list[str]] | None = None
        while True:
            try:
                async with AsyncXpudClient(self.socket) as xpud:
                    inventory = await xpud.inventory()
                    now = (inventory.driver_version, [d.uuid for d in inventory.devices])
                    if now != seen:
                        seen = now
                        self.wake()
                    backoff.reset()
                    async for _ in xpud.events():
                        pass
            except XpuError as exc:
                log.debug("xpud: %s", exc)
            await asyncio.sleep(backoff.next())

    def reload(self) -> None:
        """Re-read the configuration; on error keep the last good one."""
        try:
            new = self.source.load()
        except ConfigError as exc:
            log.error("%s; keeping the last good configuration", exc)
            return
        if new != self.config:
            self.config = new
            self.wake()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(supervise("the xpud watch", self._watch_xpud)),
            asyncio.create_task(
                supervise(
                    "the config watch",
                    lambda: watch_config(self.source, self.config_poll, self.reload),
                )
            ),
        ]
        backoff = Backoff(initial=1.0, cap=30.0)
        try:
            while True:
                self._wake.clear()
                try:
                    await self.label_once()
                    backoff.reset()
                    timeout = self.interval
                except (XpuError, KubeError, OSError) as exc:
                    timeout = backoff.next()
                    log.error("labelling failed (%s); retrying in %.1fs", exc, timeout)
                except Exception as exc:
                    # Not foreseen, so with its traceback; but an outage of xpud or the API
                    # server must never end the process (a CrashLoopBackOff outlasts it).
                    timeout = backoff.next()
                    log.error(
                        "labelling failed (%s: %s); retrying in %.1fs",
                        type(exc).__name__,
                        exc,
                        timeout,
                        exc_info=exc,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
