"""The xpud HTTP APIs (FastAPI), served over unix sockets.

Two apps share the workload routes. The admin app (the main socket, root only) sees the whole
node and adds fault injection, the clock and scope management. The workload app is served on
each scope's own socket: a request there sees only that scope's devices, numbered 0..n-1,
and its own contexts; the admin routes answer 403.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as AsgiScope

from openxpu_runtime import __version__, api
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    XpuError,
    describe_problems,
)
from openxpu_runtime.state import Scope

# A stream whose reader falls this far behind is closed; the reader reconnects and gets a
# fresh snapshot instead of a stale backlog.
STREAM_BACKLOG = 4096
STREAM_KEEPALIVE_SECONDS = 10.0

# Every error, ours or the framework's, has one shape. 422: the request does not match the
# schema (FastAPI's status for it, kept); 400: it matches but makes no sense.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": api.ErrorResponse} for code in (400, 403, 404, 409, 422)
}
# Where a scope socket's wrapper puts the scope id in each request's ASGI scope.
SCOPE_KEY = "openxpu.scope"


class EventStreams:
    """Open event streams, so shutdown can end them instead of waiting on them."""

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue[api.Event | None]] = set()

    def close_all(self) -> None:
        for q in self.queues:
            q.put_nowait(None)


class ScopeSockets(Protocol):
    """What the admin app needs of the daemon's per-scope listeners."""

    def path(self, scope_id: str) -> Path: ...

    async def open(self, scope_id: str) -> None: ...

    async def close(self, scope_id: str) -> None: ...


class ScopeBound:
    """The workload app as one scope's socket serves it: every request carries the scope."""

    def __init__(self, app: ASGIApp, scope_id: str) -> None:
        self.app = app
        self.scope_id = scope_id

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        scope[SCOPE_KEY] = self.scope_id
        await self.app(scope, receive, send)


def _new_app(engine: Engine, summary: str) -> FastAPI:
    app = FastAPI(title="xpud", version=__version__, summary=summary)
    app.state.engine = engine
    app.state.streams = EventStreams()

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

    return app


def _caller(request: Request) -> Scope | None:
    resolve: Callable[[Request], Scope | None] = request.app.state.caller
    return resolve(request)


# Who is asking: None on the admin socket (the whole node), else the scope of the socket.
Caller = Annotated[Scope | None, Depends(_caller)]


def _workload_routes(app: FastAPI, caller: Callable[[Request], Scope | None]) -> None:
    """The routes both sockets serve, each answering as its caller sees the node."""
    engine: Engine = app.state.engine
    streams: EventStreams = app.state.streams
    app.state.caller = caller

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/version", responses=ERRORS)
    async def version(scope: Caller) -> api.VersionInfo:
        return api.VersionInfo(
            api=api.API_VERSION,
            runtime_version=__version__,
            driver_version=engine.driver_version,
            node=engine.node,
            clock="manual" if isinstance(engine.clock, ManualClock) else "system",
            scope=scope.id if scope else None,
        )

    @app.get("/v1/inventory", responses=ERRORS)
    async def inventory(scope: Caller) -> api.Inventory:
        return engine.inventory(scope)

    @app.get("/v1/telemetry", responses=ERRORS)
    async def telemetry(scope: Caller) -> api.Telemetry:
        return engine.telemetry(scope)

    @app.get("/v1/devices/{device}", responses=ERRORS)
    async def device(device: str, scope: Caller) -> api.DeviceTelemetry:
        engine.advance()
        return engine.device_telemetry(engine.device(device, scope), scope)

    @app.get("/v1/processes", responses=ERRORS)
    async def processes(scope: Caller) -> list[api.Context]:
        return engine.processes(scope)

    @app.post("/v1/contexts", status_code=201, responses=ERRORS)
    async def open_context(req: api.ContextRequest, scope: Caller) -> api.Context:
        return engine.open_context(req, scope)

    @app.get("/v1/contexts/{context_id}", responses=ERRORS)
    async def get_context(context_id: str, scope: Caller) -> api.Context:
        return engine.get_context(context_id, scope)

    @app.post("/v1/contexts/{context_id}/heartbeat", responses=ERRORS)
    async def heartbeat(context_id: str, scope: Caller) -> api.Context:
        return engine.get_context(context_id, scope)

    @app.delete("/v1/contexts/{context_id}", status_code=204, responses=ERRORS)
    async def close_context(context_id: str, scope: Caller) -> Response:
        engine.close_context(context_id, scope)
        return Response(status_code=204)

    @app.post("/v1/contexts/{context_id}/allocations", status_code=201, responses=ERRORS)
    async def allocate(
        context_id: str, req: api.AllocationRequest, scope: Caller
    ) -> api.Allocation:
        return engine.allocate(context_id, req, scope)

    @app.delete("/v1/contexts/{context_id}/allocations/{handle}", status_code=204, responses=ERRORS)
    async def free(context_id: str, handle: str, scope: Caller) -> Response:
        engine.free(context_id, handle, scope)
        return Response(status_code=204)

    @app.post("/v1/contexts/{context_id}/launches", status_code=202, responses=ERRORS)
    async def launch(context_id: str, req: api.LaunchRequest, scope: Caller) -> api.LaunchResult:
        return engine.launch(context_id, req, scope)

    @app.post("/v1/contexts/{context_id}/synchronize", responses=ERRORS)
    async def synchronize(context_id: str, req: api.SyncRequest, scope: Caller) -> api.SyncResult:
        return engine.synchronize(context_id, req, scope)

    @app.get(
        "/v1/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"application/x-ndjson": {}}}},
    )
    async def events(scope: Caller) -> StreamingResponse:
        queue: asyncio.Queue[api.Event | None] = asyncio.Queue()

        def deleted() -> bool:
            return scope is not None and scope.id not in engine.scopes

        def deliver(event: api.Event) -> None:
            if deleted():  # the allocation is gone: so is its stream
                queue.put_nowait(None)
                return
            seen = engine.event_for(event, scope)
            if seen is not None:
                queue.put_nowait(seen if queue.qsize() < STREAM_BACKLOG else None)

        snapshot = engine.snapshot_events(scope)
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
                        if deleted():
                            return
                        yield b"\n"  # keepalive: lets readers notice a dead daemon
                        continue
                    if item is None:
                        return
                    yield item.model_dump_json().encode() + b"\n"
            finally:
                unsubscribe()
                streams.queues.discard(queue)

        return StreamingResponse(lines(), media_type="application/x-ndjson")


def create_app(engine: Engine, scope_sockets: ScopeSockets | None = None) -> FastAPI:
    """The admin API: the whole node. `scope_sockets`: where scopes get their sockets
    (None: scopes are kept but not served, for in-process tests)."""
    app = _new_app(engine, "OpenXPU node daemon API (admin)")
    _workload_routes(app, lambda _: None)

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

    def view(scope: Scope) -> api.Scope:
        socket = str(scope_sockets.path(scope.id)) if scope_sockets else None
        return engine.scope_view(scope, socket)

    @app.post("/v1/scopes", status_code=201, responses=ERRORS)
    async def create_scope(req: api.ScopeRequest) -> api.Scope:
        scope = engine.create_scope(req)
        if scope_sockets:
            try:
                await scope_sockets.open(scope.id)
            except BaseException:
                engine.delete_scope(scope.id)  # a scope no one can reach is not kept
                raise
        return view(scope)

    @app.get("/v1/scopes", responses=ERRORS)
    async def list_scopes() -> list[api.Scope]:
        return [view(s) for s in engine.scopes.values()]

    @app.get("/v1/scopes/{scope_id}", responses=ERRORS)
    async def get_scope(scope_id: str) -> api.Scope:
        return view(engine.scope(scope_id))

    @app.delete("/v1/scopes/{scope_id}", status_code=204, responses=ERRORS)
    async def delete_scope(scope_id: str) -> Response:
        engine.delete_scope(scope_id)
        if scope_sockets:
            await scope_sockets.close(scope_id)
        return Response(status_code=204)

    return app


def admin_routes(app: FastAPI) -> list[tuple[str, set[str]]]:
    """(path, methods) of the routes only the admin API has."""
    return [
        (r.path, set(r.methods or ()))
        for r in app.routes
        if isinstance(r, Route) and r.include_in_schema and r.path.startswith("/v1/")
    ]


def create_workload_app(engine: Engine, admin: FastAPI) -> FastAPI:
    """The API of a scope's socket; wrap it in `ScopeBound` to serve one scope."""
    app = _new_app(engine, "OpenXPU node daemon API (workload: one allocation's devices)")

    def caller(request: Request) -> Scope:
        return engine.caller(request.scope.get(SCOPE_KEY))

    _workload_routes(app, caller)
    workload = {(p, m) for p, methods in admin_routes(app) for m in methods}

    async def refuse(request: Request) -> Response:
        raise PermissionDenied(
            f"{request.method} {request.url.path} needs xpud's admin socket, which only root "
            "on the host and the node's operands reach; this socket serves one allocation"
        )

    # The admin routes answer 403 here rather than 404: the caller learns why, not only that.
    for path, methods in admin_routes(admin):
        refused = sorted(m for m in methods if (path, m) not in workload)
        if refused:
            app.add_api_route(path, refuse, methods=refused, include_in_schema=False)
    return app
