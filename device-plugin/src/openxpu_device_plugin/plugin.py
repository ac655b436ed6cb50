"""The plugin's lifecycle: serve, register, re-register when the kubelet restarts or on
SIGHUP, reload configuration keeping the last good one, retry a failed start, stop cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from openxpu_device_plugin import cdi, compat
from openxpu_device_plugin.config import Config, ConfigError, ConfigSource, watch_config
from openxpu_device_plugin.health import Backoff, HealthWatcher
from openxpu_device_plugin.registration import (
    REGISTER_TIMEOUT,
    register,
    wait_for_kubelet_restart,
)
from openxpu_device_plugin.resources import ResourceManager
from openxpu_device_plugin.scopes import ScopeReconciler, SparePool
from openxpu_device_plugin.server import PluginServer
from openxpu_device_plugin.supervise import supervise
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient

log = logging.getLogger(__name__)


def endpoint_for(resource: str) -> str:
    """The socket name: `openxpu.io-xpu.sock` for `openxpu.io/xpu`, like `nvidia-gpu.sock`."""
    return resource.replace("/", "-") + ".sock"


class DevicePlugin:
    def __init__(
        self,
        source: ConfigSource,
        config: Config,
        config_poll: float = 2.0,
        register_timeout: float = REGISTER_TIMEOUT,
    ) -> None:
        self.source = source
        self.config = config
        self.config_poll = config_poll
        self.register_timeout = register_timeout
        self.rm = ResourceManager(config)
        self.health = HealthWatcher(
            self.rm,
            Path(config.flags.xpud_socket),
            on_inventory=self._inventory_changed,
            checks=lambda: self.config.health,
        )
        self.registered = asyncio.Event()
        self.registrations = 0
        self.last_config_error: str | None = None
        self.reloaded = asyncio.Event()  # set after every reload attempt, good or bad
        self.server: PluginServer | None = None
        self._restart = asyncio.Event()
        self._restart_reason = ""
        self._stop = asyncio.Event()

    @property
    def plugin_dir(self) -> Path:
        return Path(self.config.flags.plugin_dir)

    @property
    def socket(self) -> Path:
        return self.plugin_dir / endpoint_for(self.config.advertised_resource)

    # -- control, from signal handlers and tests ------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    def request_restart(self, reason: str) -> None:
        self._restart_reason = reason
        self._restart.set()

    def hangup(self) -> None:
        """SIGHUP: re-read the configuration, then serve and register again."""
        self.reload()
        self.request_restart("SIGHUP")

    def reload(self) -> bool:
        """Re-read the configuration; on error keep the last good one. True if it changed."""
        try:
            return self._reload()
        finally:
            self.reloaded.set()

    def _reload(self) -> bool:
        try:
            new = self.source.load()
        except ConfigError as exc:
            self.last_config_error = str(exc)
            log.error("%s; keeping the last good configuration", exc)
            return False
        self.last_config_error = None
        if new == self.config:
            return False
        if new.flags.xpud_socket != self.config.flags.xpud_socket:
            log.warning("xpudSocket changes take effect on the next start of the plugin")
        health_changed = new.health != self.config.health
        self.config = new
        self.rm.apply_config(new)
        if health_changed:
            self.health.resync()
        log.info("configuration changed: %s", new.model_dump(by_alias=True, mode="json"))
        self._write_cdi()
        self.request_restart("configuration changed")
        return True

    # -- the work -------------------------------------------------------------------------

    def _health_crashed(self, exc: Exception) -> None:
        # Until the watch is back, nothing vouches for the devices: stale health is worse.
        self.rm.set_unreachable(f"the health watch failed: {type(exc).__name__}: {exc}")

    async def _inventory_changed(self, inventory: api.Inventory) -> None:
        self._write_cdi()

    def _write_cdi(self) -> None:
        if not self.rm.reachable:
            return
        spec = cdi.build_spec(self.rm.xpus, self.config.flags.xpud_socket)
        spec = compat.add_to_cdi(spec, self.config.flags)
        try:
            if cdi.write_spec(Path(self.config.flags.cdi_spec_dir), spec):
                log.info("wrote CDI spec %s", Path(self.config.flags.cdi_spec_dir) / cdi.SPEC_NAME)
        except OSError as exc:
            log.error("cannot write the CDI spec in %s: %s", self.config.flags.cdi_spec_dir, exc)

    async def _serve_once(self, backoff: Backoff, scopes: SparePool) -> None:
        server = PluginServer(self.rm, scopes, self.socket)
        self.server = server
        try:
            await server.start()
            registering = asyncio.ensure_future(
                register(
                    self.plugin_dir,
                    self.socket.name,
                    self.config.advertised_resource,
                    self.register_timeout,
                )
            )
            # SIGTERM must not wait out a slow kubelet's registration timeout.
            await _first(self._stop.wait(), registering)
            if not registering.done():
                registering.cancel()
                await server.stop()
                return
            registering.result()
        except Exception as exc:
            await server.stop()
            delay = backoff.next()
            log.error("start failed (%s); retrying in %.1fs", exc, delay)
            await _first(self._stop.wait(), asyncio.sleep(delay))
            return
        backoff.reset()
        self.registrations += 1
        self.registered.set()
        log.info(
            "registered %s with the kubelet at %s as %s",
            self.config.advertised_resource,
            self.plugin_dir,
            self.socket.name,
        )
        watch = asyncio.ensure_future(wait_for_kubelet_restart(self.plugin_dir, self.socket))
        await _first(self._stop.wait(), self._restart.wait(), watch)
        if watch.done():
            self._restart_reason = watch.result()
        watch.cancel()
        self.registered.clear()
        if not self._stop.is_set():
            log.info("restarting the plugin server: %s", self._restart_reason)
        self._restart.clear()
        started = time.monotonic()
        await server.stop()
        log.debug("server stopped in %.3fs", time.monotonic() - started)

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(
                supervise("the health watch", self.health.run, self._health_crashed),
                name="health",
            ),
            asyncio.create_task(
                supervise(
                    "the config watch",
                    lambda: watch_config(self.source, self.config_poll, self.reload),
                ),
                name="config",
            ),
        ]
        # Allocate's connection to xpud's admin socket, kept alive.
        xpud = AsyncXpudClient(Path(self.config.flags.xpud_socket))
        spares = SparePool(xpud, self.rm.spare_requests)
        reconciler = ScopeReconciler(
            xpud,
            Path(self.config.flags.pod_resources_socket),
            resource=lambda: self.config.advertised_resource,
            grace_period=lambda: self.config.flags.scope_grace_period,
            spare=spares.holds,
            handed=spares.last_handed,
        )

        async def refresh_spares() -> None:
            # Health, inventory and configuration change what the spares should be.
            generation = self.rm.generation
            while True:
                generation = await self.rm.wait_changed(generation)
                spares.refresh()

        tasks += [
            asyncio.create_task(supervise("the spare scopes", spares.run), name="spares"),
            asyncio.create_task(supervise("the spare refresh", refresh_spares), name="refresh"),
            asyncio.create_task(
                supervise(
                    "the scope reconciler",
                    lambda: reconciler.run(lambda: reconcile_interval(self.config)),
                ),
                name="scopes",
            ),
        ]
        backoff = Backoff(initial=0.2, cap=10.0)
        try:
            while not self._stop.is_set():
                await self._serve_once(backoff, spares)
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if self.server is not None:
                await self.server.stop()
            await xpud.aclose()
            log.info("device plugin stopped")


def reconcile_interval(config: Config) -> float:
    """How often scopes are reconciled: often enough that an unused one outlives its grace
    period by at most a fifth of it, and never more than once a second."""
    return max(1.0, min(10.0, config.flags.scope_grace_period / 5))


async def _first(*aws: Awaitable[Any]) -> None:
    """Wait until the first of `aws` finishes; cancel the others that we created."""
    futs = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(futs, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for f, a in zip(futs, aws, strict=True):
            if f is not a:
                f.cancel()
