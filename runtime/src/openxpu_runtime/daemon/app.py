"""The xpud HTTP API (FastAPI), served over a unix socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openxpu_runtime import __version__, api
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.errors import FailedPrecondition, InvalidArgument, XpuError, describe_problems

# A stream whose reader falls this far behind is closed; the reader reconnects and gets a
# fresh snapshot instead of a stale backlog.
STREAM_BACKLOG = 4096
STREAM_KEEPALIVE_SECONDS = 10.0

# Every error, ours or the framework's, has one shape. 422: the request does not match the
# schema (FastAPI's status for it, kept); 400: it matches but makes no sense.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": api.ErrorResponse} for code in (400, 404, 409, 422)
}


class EventStreams:
    """Open event streams, so shutdown can end them instead of waiting on them."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[api.Event | None]] = set()

    def close_all(self) -> None:
        for q in self.queues:
            q.put_nowait(None)


def create_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="xpud", version=__version__, summary="OpenXPU node daemon API")
    streams = EventStreams()
    app.state.engine = engine
    app.state.streams = streams

    @app.exception_handler(XpuError)
    async def xpu_error(_: Request, exc: XpuError) -> JSONResponse:
        error = api.ErrorBody(code=exc.code, message=exc.message, device_uuid=exc.device_uuid)
        body = api.ErrorResponse(error=error)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        message = f"invalid request: {describe_problems(exc.errors())}"
        body = api.ErrorResponse(error=api.ErrorBody(code=InvalidArgument.code, message=message))
        return JSONResponse(body.model_dump(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown routes and unparseable bodies answer in the same shape as our own errors.
        code = {400: "invalid_argument", 404: "not_found"}.get(exc.status_code, "http_error")
        body = api.ErrorResponse(error=api.ErrorBody(code=code, message=str(exc.detail)))
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/version")
    async def version() -> api.VersionInfo:
        return api.VersionInfo(
            api=api.API_VERSION,
            runtime_version=__version__,
            driver_version=engine.driver_version,
            node=engine.node,
            clock="manual" if isinstance(engine.clock, ManualClock) else "system",
        )

    @app.get("/v1/inventory")
    async def inventory() -> api.Inventory:
        return engine.inventory()

    @app.get("/v1/telemetry")
    async def telemetry() -> api.Telemetry:
        return engine.telemetry()

    @app.get("/v1/devices/{device}", responses=ERRORS)
    async def device(device: str) -> api.DeviceTelemetry:
        engine.advance()
        return engine.device_telemetry(engine.device(device))

    @app.get("/v1/processes")
    async def processes() -> list[api.Context]:
        return engine.processes()

    @app.post("/v1/contexts", status_code=201, responses=ERRORS)
    async def open_context(req: api.ContextRequest) -> api.Context:
        return engine.open_context(req)

    @app.get("/v1/contexts/{context_id}", responses=ERRORS)
    async def get_context(context_id: str) -> api.Context:
        return engine.get_context(context_id)

    @app.post("/v1/contexts/{context_id}/heartbeat", responses=ERRORS)
    async def heartbeat(context_id: str) -> api.Context:
        return engine.get_context(context_id)

    @app.delete("/v1/contexts/{context_id}", status_code=204, responses=ERRORS)
    async def close_context(context_id: str) -> Response:
        engine.close_context(context_id)
        return Response(status_code=204)

    @app.post("/v1/contexts/{context_id}/allocations", status_code=201, responses=ERRORS)
    async def allocate(context_id: str, req: api.AllocationRequest) -> api.Allocation:
        return engine.allocate(context_id, req)

    @app.delete("/v1/contexts/{context_id}/allocations/{handle}", status_code=204, responses=ERRORS)
    async def free(context_id: str, handle: str) -> Response:
        engine.free(context_id, handle)
        return Response(status_code=204)

    @app.post("/v1/contexts/{context_id}/launches", status_code=202, responses=ERRORS)
    async def launch(context_id: str, req: api.LaunchRequest) -> api.LaunchResult:
        return engine.launch(context_id, req)

    @app.post("/v1/contexts/{context_id}/synchronize", responses=ERRORS)
    async def synchronize(context_id: str, req: api.SyncRequest) -> api.SyncResult:
        return engine.synchronize(context_id, req)

    @app.post("/v1/faults", status_code=201, responses=ERRORS)
    async def inject_fault(req: api.FaultRequest) -> api.FaultInjected:
        return engine.inject_fault(req)

    @app.delete("/v1/faults/{device}", responses=ERRORS)
    async def clear_faults(device: str, code: int | None = None) -> api.FaultsCleared:
        return engine.clear_faults(device, code)

    @app.post("/v1/clock/advance", responses=ERRORS)
    async def advance_clock(req: api.ClockAdvance) -> api.ClockReading:
        if not isinstance(engine.clock, ManualClock):
            raise FailedPrecondition("the clock is the system clock; start xpud --clock manual")
        now = engine.clock.advance(req.seconds)
        engine.advance()
        return api.ClockReading(now=now)

    @app.get(
        "/v1/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    async def events() -> StreamingResponse:
        queue: asyncio.Queue[api.Event | None] = asyncio.Queue()

        def deliver(event: api.Event) -> None:
            queue.put_nowait(event if queue.qsize() < STREAM_BACKLOG else None)

        snapshot = engine.snapshot_events()
        unsubscribe = engine.subscribe(deliver)
        streams.queues.add(queue)

        async def lines() -> AsyncIterator[bytes]:
            try:
                for event in snapshot:
                    yield event.model_dump_json().encode() + b"\n"
                while True:
                    try:
                        item = await asyncio.wait_for(queue.get(), STREAM_KEEPALIVE_SECONDS)
                    except TimeoutError:
                        yield b"\n"  # keepalive: lets readers notice a dead daemon
                        continue
                    if item is None:
                        return
                    yield item.model_dump_json().encode() + b"\n"
            finally:
                unsubscribe()
                streams.queues.discard(queue)

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app
