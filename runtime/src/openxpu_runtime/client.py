"""The one module that talks to xpud. Sync for CLIs and workloads, async for node agents."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpcore
import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from openxpu_runtime import api
from openxpu_runtime.errors import (
    BY_CODE,
    BadResponse,
    InvalidArgument,
    Unreachable,
    XpuError,
    describe_problems,
)
from openxpu_runtime.paths import default_socket, probe_socket

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
# The socket is local: anything slower than this is a hung daemon, not a slow network.
TIMEOUT = httpx.Timeout(10.0, connect=2.0)
_CONTEXTS = TypeAdapter(list[api.Context])
_SCOPES = TypeAdapter(list[api.Scope])


def _raise_for(response: httpx.Response) -> None:
    """The XpuError an error response stands for. Reads the body first, so it works on
    streaming responses too."""
    if response.status_code < 400:
        return
    response.read()
    _raise_error(response)


async def _araise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    await response.aread()
    _raise_error(response)


def _raise_error(response: httpx.Response) -> None:
    try:
        body = response.json()
    except ValueError:
        raise XpuError(f"xpud answered {response.status_code}: {response.text[:200]}") from None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        uuid = err.get("device_uuid")
        raise BY_CODE.get(str(err.get("code")), XpuError)(
            str(err.get("message", "")), uuid if isinstance(uuid, str) else None
        )
    if (
        response.status_code == 422
        and isinstance(body, dict)
        and isinstance(body.get("detail"), list)
    ):
        # FastAPI's own shape: how older xpuds answered request validation errors.
        raise InvalidArgument(f"invalid request: {describe_problems(body['detail'])}")
    raise XpuError(f"xpud answered {response.status_code}: {str(body)[:200]}")


def _parse(validate_json: Callable[[str | bytes], T], data: str | bytes) -> T:
    """A response body as its model; BadResponse (an XpuError) if it is not one."""
    try:
        return validate_json(data)
    except ValidationError as exc:
        raise BadResponse(
            f"xpud answered something this client cannot read: {describe_problems(exc.errors())}"
        ) from None


class _ProbingBackend(httpcore.SyncBackend):
    """httpcore's sync backend leaks the socket when a unix connect fails (ResourceWarning
    on every retry against a stopped daemon); probe with a socket we close ourselves."""

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            probe_socket(path, timeout)
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        return super().connect_unix_socket(path, timeout, socket_options)


def unix_transport(path: Path) -> httpx.HTTPTransport:
    """An httpx transport to a unix socket that closes what a failed connect opened."""
    transport = httpx.HTTPTransport(uds=str(path))
    transport._pool = httpcore.ConnectionPool(uds=str(path), network_backend=_ProbingBackend())
    return transport


def _unreachable(socket: Path, exc: Exception) -> Unreachable:
    return Unreachable(
        f"cannot reach xpud at {socket} ({exc}); is the XPU driver installed and xpud running?"
    )


def _parse_event(line: str) -> api.Event | None:
    line = line.strip()
    return _parse(api.Event.model_validate_json, line) if line else None


def _request(model: type[M], **fields: Any) -> M:
    """Build a request, refusing bad arguments the way the daemon would."""
    try:
        return model(**fields)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid request: {describe_problems(exc.errors())}") from None


class XpudClient:
    def __init__(self, socket: Path | None = None, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.socket = socket or default_socket()
        self._http = httpx.Client(
            transport=unix_transport(self.socket),
            base_url="http://xpud",
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> XpudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                path,
                params=params,
                json=body.model_dump(exclude_none=True) if body else None,
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.socket, exc) from exc
        _raise_for(response)
        return response

    def _get(self, path: str, model: type[M]) -> M:
        return _parse(model.model_validate_json, self._call("GET", path).content)

    def _post(self, path: str, body: BaseModel | None, model: type[M]) -> M:
        return _parse(model.model_validate_json, self._call("POST", path, body).content)

    # -- readings -------------------------------------------------------------------------

    def version(self) -> api.VersionInfo:
        return self._get("/v1/version", api.VersionInfo)

    def inventory(self) -> api.Inventory:
        return self._get("/v1/inventory", api.Inventory)

    def telemetry(self) -> api.Telemetry:
        return self._get("/v1/telemetry", api.Telemetry)

    def device(self, ref: str | int) -> api.DeviceTelemetry:
        return self._get(f"/v1/devices/{ref}", api.DeviceTelemetry)

    def processes(self) -> list[api.Context]:
        return _parse(_CONTEXTS.validate_json, self._call("GET", "/v1/processes").content)

    def events(self) -> Iterator[api.Event]:
        """The health-event stream: a snapshot of every device, then changes as they happen."""
        try:
            with self._http.stream("GET", "/v1/events", timeout=httpx.Timeout(None)) as r:
                _raise_for(r)
                for line in r.iter_lines():
                    event = _parse_event(line)
                    if event:
                        yield event
        except httpx.TransportError as exc:
            raise _unreachable(self.socket, exc) from exc

    # -- workloads ------------------------------------------------------------------------

    def open_context(self, req: api.ContextRequest) -> api.Context:
        return self._post("/v1/contexts", req, api.Context)

    def heartbeat(self, context_id: str) -> api.Context:
        return self._post(f"/v1/contexts/{context_id}/heartbeat", None, api.Context)

    def close_context(self, context_id: str) -> None:
        self._call("DELETE", f"/v1/contexts/{context_id}")

    def allocate(self, context_id: str, device: str, size: int) -> api.Allocation:
        req = _request(api.AllocationRequest, device=device, size=size)
        return self._post(f"/v1/contexts/{context_id}/allocations", req, api.Allocation)

    def free(self, context_id: str, handle: str) -> None:
        self._call("DELETE", f"/v1/contexts/{context_id}/allocations/{handle}")

    def launch(
        self, context_id: str, device: str, ops: float, kind: str = "vector"
    ) -> api.LaunchResult:
        req = _request(api.LaunchRequest, device=device, ops=ops, kind=kind)
        return self._post(f"/v1/contexts/{context_id}/launches", req, api.LaunchResult)

    def synchronize(self, context_id: str, device: str | None = None) -> api.SyncResult:
        req = _request(api.SyncRequest, device=device)
        return self._post(f"/v1/contexts/{context_id}/synchronize", req, api.SyncResult)

    # -- faults and the test clock --------------------------------------------------------

    def inject_fault(self, req: api.FaultRequest) -> api.FaultInjected:
        return self._post("/v1/faults", req, api.FaultInjected)

    def clear_faults(self, device: str, code: int | None = None) -> api.FaultsCleared:
        params = {"code": code} if code is not None else None
        response = self._call("DELETE", f"/v1/faults/{device}", params=params)
        return _parse(api.FaultsCleared.model_validate_json, response.content)

    def advance_clock(self, seconds: float) -> float:
        return self._post(
            "/v1/clock/advance", api.ClockAdvance(seconds=seconds), api.ClockReading
        ).now

    # -- scopes (admin socket) ------------------------------------------------------------

    def create_scope(self, req: api.ScopeRequest) -> api.Scope:
        return self._post("/v1/scopes", req, api.Scope)

    def scopes(self) -> list[api.Scope]:
        return _parse(_SCOPES.validate_json, self._call("GET", "/v1/scopes").content)

    def delete_scope(self, scope_id: str) -> None:
        self._call("DELETE", f"/v1/scopes/{scope_id}")


def wait_until_answering(socket: Path, exit_code: Callable[[], int | None], timeout: float) -> None:
    """Block until a just-started xpud answers on `socket`; Unreachable if its process
    exits first (`exit_code` returns non-None) or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    with XpudClient(socket) as client:
        while True:
            code = exit_code()
            if code is not None:
                raise Unreachable(f"xpud exited with {code} before answering on {socket}")
            try:
                client.version()
                return
            except Unreachable:
                if time.monotonic() > deadline:
                    raise Unreachable(f"xpud did not answer on {socket} in {timeout}s") from None
                time.sleep(0.05)


class AsyncXpudClient:
    """What node agents (device plugin, exporter) read: inventory, telemetry, events."""

    def __init__(self, socket: Path | None = None, timeout: httpx.Timeout = TIMEOUT) -> None:
        self.socket = socket or default_socket()
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket)),
            base_url="http://xpud",
            timeout=timeout,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncXpudClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, method: str, path: str, body: BaseModel | None = None) -> httpx.Response:
        try:
            response = await self._http.request(
                method, path, json=body.model_dump(exclude_none=True) if body else None
            )
        except httpx.TransportError as exc:
            raise _unreachable(self.socket, exc) from exc
        _raise_for(response)
        return response

    async def _get(self, path: str, model: type[M]) -> M:
        return _parse(model.model_validate_json, (await self._call("GET", path)).content)

    # The device plugin's side of a scope: created in Allocate, reconciled, deleted.

    async def create_scope(self, req: api.ScopeRequest) -> api.Scope:
        response = await self._call("POST", "/v1/scopes", req)
        return _parse(api.Scope.model_validate_json, response.content)

    async def scopes(self) -> list[api.Scope]:
        return _parse(_SCOPES.validate_json, (await self._call("GET", "/v1/scopes")).content)

    async def delete_scope(self, scope_id: str) -> None:
        await self._call("DELETE", f"/v1/scopes/{scope_id}")

    async def version(self) -> api.VersionInfo:
        return await self._get("/v1/version", api.VersionInfo)

    async def inventory(self) -> api.Inventory:
        return await self._get("/v1/inventory", api.Inventory)

    async def telemetry(self) -> api.Telemetry:
        return await self._get("/v1/telemetry", api.Telemetry)

    async def events(self, read_timeout: float = 30.0) -> AsyncIterator[api.Event]:
        """As `XpudClient.events`; raises Unreachable when the daemon goes away or falls
        silent for `read_timeout` (it sends a keepalive line every 10 s)."""
        timeout = httpx.Timeout(TIMEOUT.connect, read=read_timeout)
        try:
            async with self._http.stream("GET", "/v1/events", timeout=timeout) as r:
                await _araise_for(r)
                async for line in r.aiter_lines():
                    event = _parse_event(line)
                    if event:
                        yield event
        except httpx.TransportError as exc:
            raise _unreachable(self.socket, exc) from exc
        raise _unreachable(self.socket, ConnectionError("event stream ended"))
