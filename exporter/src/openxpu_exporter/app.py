"""The HTTP face: /metrics, /healthz, /readyz, /devices, and the loops that keep state fresh."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc.aio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from openxpu_exporter import __version__
from openxpu_exporter.attribution import PodResourcesClient
from openxpu_exporter.collector import XpuCollector, pod_labels
from openxpu_exporter.config import Config
from openxpu_exporter.exposition import TEXT_CONTENT_TYPE, TextEncoder, serves_text
from openxpu_exporter.snapshot import ExporterState, SnapshotReader
from openxpu_runtime.client import AsyncXpudClient

log = logging.getLogger(__name__)

# Scrapes of a cached snapshot take about a millisecond (docs/exporter.md); the buckets
# resolve that and still show a slow per-scrape read of a large node.
SCRAPE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Exporter:
    """State, readers and registry of one exporter; the app and the tests share it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.state = ExporterState()
        self.registry = CollectorRegistry()
        self.collector = XpuCollector(config, self.state)
        self.registry.register(self.collector)
        # The exporter's own CPU and RSS (process_*), as every Prometheus exporter shows them.
        process = ProcessCollector(registry=self.registry)
        self.scrape_seconds = Histogram(
            "openxpu_exporter_scrape_duration_seconds",
            "Time to answer /metrics, including a per-scrape read of xpud if configured.",
            buckets=SCRAPE_BUCKETS,
            registry=self.registry,
        )
        self.xpud = AsyncXpudClient(config.xpud_socket)
        self.reader = SnapshotReader(self.xpud, self.state)
        self.podresources = (
            PodResourcesClient(config.kubelet_socket, config.resource_names)
            if config.pod_attribution
            else None
        )
        self.encoder = TextEncoder()
        # The registry's collectors in its order, for the fast encoder (the same bytes).
        self.collectors = (self.collector, process, self.scrape_seconds)
        self._read_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def refresh_snapshot(self) -> None:
        # Concurrent per-scrape reads share one read rather than queueing several on xpud.
        if self._read_lock.locked():
            async with self._read_lock:
                return
        async with self._read_lock:
            await self.reader.refresh()

    async def refresh_attribution(self) -> None:
        if self.podresources is None:
            return
        state = self.state
        try:
            attribution = await self.podresources.list()
            up = True
        except FileNotFoundError as exc:
            # No kubelet socket (not on Kubernetes, or the mount is missing): no pod labels.
            if state.podresources_up is not False:
                log.warning("pod attribution off until the socket appears: %s", exc)
            attribution, up = {}, False
        except grpc.aio.AioRpcError as exc:
            # A kubelet restart: keep the last mapping rather than flap every series' labels.
            if state.podresources_up is not False:
                log.warning("kubelet PodResources List failed: %s", exc.details())
            attribution, up = state.attribution, False
        if not up:
            state.errors["podresources"] += 1
        state.podresources_up = up
        if attribution != state.attribution:
            state.attribution = attribution
            state.attribution_version += 1

    async def _every(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await step()
            except Exception:  # a loop that dies silently would freeze the metrics
                log.exception("background refresh failed")

    async def start(self) -> None:
        await self.refresh_attribution()
        await self.refresh_snapshot()
        if self.podresources is not None:
            self._spawn(self.config.attribution_interval, self.refresh_attribution)
        if self.config.refresh_interval > 0:
            self._spawn(self.config.refresh_interval, self.refresh_snapshot)

    def _spawn(self, seconds: float, step: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.create_task(self._every(seconds, step), name=getattr(step, "__name__", None))
        task.add_done_callback(lambda ended: self._loop_ended(ended, seconds, step))
        self._tasks.append(task)

    def _loop_ended(
        self, task: asyncio.Task[None], seconds: float, step: Callable[[], Awaitable[None]]
    ) -> None:
        # `_every` outlives every Exception, so only a cancellation from elsewhere gets here
        # (BaseExceptions stop the event loop and the process). Left dead, the metrics would
        # freeze behind xpud_up 1: start the loop again.
        self._tasks.remove(task)
        if self._stopping:
            return
        log.error("background loop %s ended unexpectedly; restarting it", task.get_name())
        self._spawn(seconds, step)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.podresources is not None:
            await self.podresources.close()
        await self.xpud.aclose()

    async def render(self, accept: str | None = None) -> tuple[bytes, str]:
        started = time.perf_counter()
        if self.config.refresh_interval == 0:
            await self.refresh_snapshot()
        if serves_text(accept):
            body, content_type = self.encoder.encode(self.collectors), TEXT_CONTENT_TYPE
        else:  # a client that takes OpenMetrics only: prometheus-client's encoder
            encoder, content_type = choose_encoder(accept or "")
            body = encoder(self.registry)
        self.scrape_seconds.observe(time.perf_counter() - started)
        return body, content_type

    def devices(self) -> list[dict[str, Any]]:
        snapshot = self.state.snapshot
        if snapshot is None:
            return []
        attribution = self.state.attribution
        out = []
        for d in snapshot.telemetry.devices:
            holders = attribution.get(d.uuid) or attribution.get(str(d.index)) or ()
            out.append(
                {
                    # Not the processes: their names and pids are other tenants' business,
                    # and anyone who reaches the pod can read this.
                    **d.model_dump(exclude={"processes"}),
                    "model": snapshot.models.get(d.uuid, ""),
                    "hostname": self.config.hostname,
                    "pods": [pod_labels(h) for h in holders],
                }
            )
        return out


def create_app(config: Config) -> FastAPI:
    exporter = Exporter(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await exporter.start()
        try:
            yield
        finally:
            await exporter.stop()

    app = FastAPI(
        title="openxpu-exporter",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.exporter = exporter

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = await exporter.render(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        # Alive while the event loop answers; losing xpud is a metric, not a restart.
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        s = exporter.state
        body = {"ready": s.ready, "xpud_up": s.xpud_up, "podresources_up": s.podresources_up}
        return JSONResponse(body, status_code=200 if s.ready else 503)

    @app.get("/devices")
    async def devices() -> JSONResponse:
        s = exporter.state
        if s.snapshot is None:
            return JSONResponse(
                {"error": {"code": "unavailable", "message": "no telemetry read from xpud yet"}},
                status_code=503,
            )
        return JSONResponse({"hostname": config.hostname, "devices": exporter.devices()})

    return app
