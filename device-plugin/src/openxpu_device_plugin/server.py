"""The DevicePlugin gRPC service (v1beta1) on a unix socket: a translation of the resource
manager's answers into the kubelet's messages, nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NoReturn, Protocol

import grpc
from grpc import aio

from openxpu_device_plugin.kubeletapi import HEALTHY, UNHEALTHY, pb, rpc
from openxpu_device_plugin.resources import (
    AllocationError,
    ContainerAllocation,
    ResourceManager,
)
from openxpu_runtime import api
from openxpu_runtime.errors import XpuError

log = logging.getLogger(__name__)

OPTIONS = pb.DevicePluginOptions(pre_start_required=False, get_preferred_allocation_available=True)


def to_devices(rm: ResourceManager) -> list[pb.Device]:
    return [
        pb.Device(
            ID=d.id,
            health=HEALTHY if d.healthy else UNHEALTHY,
            topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=d.numa_node)]),
        )
        for d in rm.advertised()
    ]


def to_response(a: ContainerAllocation) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=a.envs,
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in a.mounts
        ],
        devices=[
            pb.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in a.devices
        ],
        cdi_devices=[pb.CDIDevice(name=n) for n in a.cdi_devices],
    )


class Scopes(Protocol):
    """Where Allocate obtains scopes: `scopes.SparePool` (a spare made ahead, else xpud's
    admin API)."""

    def answering(self) -> Callable[[], None]: ...

    async def create_scope(self, req: api.ScopeRequest) -> api.Scope: ...

    async def delete_scope(self, scope_id: str) -> None: ...


class DevicePluginService(rpc.DevicePluginServicer):
    def __init__(self, rm: ResourceManager, scopes: Scopes) -> None:
        self.rm = rm
        self.scopes = scopes

    async def GetDevicePluginOptions(
        self, request: pb.Empty, context: aio.ServicerContext[pb.Empty, pb.DevicePluginOptions]
    ) -> pb.DevicePluginOptions:
        return OPTIONS

    async def ListAndWatch(
        self, request: pb.Empty, context: aio.ServicerContext[pb.Empty, pb.ListAndWatchResponse]
    ) -> AsyncIterator[pb.ListAndWatchResponse]:
        # Every change (health, inventory, config) re-sends the whole list, as the API asks.
        generation = self.rm.generation
        yield pb.ListAndWatchResponse(devices=to_devices(self.rm))
        while True:
            generation = await self.rm.wait_changed(generation)
            yield pb.ListAndWatchResponse(devices=to_devices(self.rm))

    async def GetPreferredAllocation(
        self,
        request: pb.PreferredAllocationRequest,
        context: aio.ServicerContext[pb.PreferredAllocationRequest, pb.PreferredAllocationResponse],
    ) -> pb.PreferredAllocationResponse:
        out = pb.PreferredAllocationResponse()
        for req in request.container_requests:
            if req.allocation_size < 0 or len(req.must_include_deviceIDs) > req.allocation_size:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"allocation_size {req.allocation_size} is smaller than must-include "
                    f"({len(req.must_include_deviceIDs)})",
                )
            ids = self.rm.preferred(
                list(req.available_deviceIDs), list(req.must_include_deviceIDs), req.allocation_size
            )
            out.container_responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return out

    async def Allocate(
        self,
        request: pb.AllocateRequest,
        context: aio.ServicerContext[pb.AllocateRequest, pb.AllocateResponse],
    ) -> pb.AllocateResponse:
        # Spares are made again once the answer is sent, not while it is being sent.
        answered = self.scopes.answering()
        # The stubs type the callback as a class of theirs; any callable is what gRPC calls.
        context.add_done_callback(lambda _: answered())  # type: ignore[arg-type]
        out = pb.AllocateResponse()
        created: list[str] = []
        for req in request.container_requests:
            ids = list(req.devices_ids)
            try:
                plan = self.rm.plan(ids)
                # No fallback: a container never starts with the admin socket.
                scope = await self.scopes.create_scope(plan.scope_request)
                created.append(scope.id)
                allocation = self.rm.container(plan, scope)
            except AllocationError as exc:
                log.warning("refused Allocate %s: %s", ids, exc)
                await self._abort(context, created, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except XpuError as exc:  # Unreachable included
                log.error("Allocate %s: xpud did not create the scope: %s", ids, exc)
                await self._abort(
                    context,
                    created,
                    grpc.StatusCode.UNAVAILABLE,
                    f"xpud did not create the scope: {exc}",
                )
            out.container_responses.append(to_response(allocation))
        return out

    async def _abort(
        self,
        context: aio.ServicerContext[pb.AllocateRequest, pb.AllocateResponse],
        created: list[str],
        code: grpc.StatusCode,
        details: str,
    ) -> NoReturn:
        # The kubelet starts no container of a failed Allocate: none of its scopes is used.
        # Deleted before answering, so whoever sees the error sees them gone.
        for scope_id in created:
            with contextlib.suppress(XpuError):
                await self.scopes.delete_scope(scope_id)
        await context.abort(code, details)

    async def PreStartContainer(
        self,
        request: pb.PreStartContainerRequest,
        context: aio.ServicerContext[pb.PreStartContainerRequest, pb.PreStartContainerResponse],
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


class PluginServer:
    """One serving of the plugin socket; a restart makes a new one."""

    def __init__(self, rm: ResourceManager, scopes: Scopes, socket: Path) -> None:
        self.socket = socket
        self.service = DevicePluginService(rm, scopes)
        self._server: aio.Server | None = None
        # (st_dev, st_ino) of the socket this server bound, while it may still be at the path.
        self._bound: tuple[int, int] | None = None

    async def start(self) -> None:
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        # Bind under a private name, then rename over the public one: the path never goes
        # missing (a stale socket from an earlier run is replaced atomically), and gRPC's own
        # unlink of its listening path at shutdown hits the private name, which is gone.
        staging = self.socket.with_name(f".{self.socket.name}.{os.getpid()}.{id(self)}")
        staging.unlink(missing_ok=True)
        server = aio.server()
        rpc.add_DevicePluginServicer_to_server(self.service, server)
        try:
            if server.add_insecure_port(f"unix://{staging}") == 0:
                raise OSError(f"cannot listen on {self.socket}")
            await server.start()
            self._server = server
            os.replace(staging, self.socket)
        finally:
            staging.unlink(missing_ok=True)
        self._bound = _inode(self.socket)

    async def stop(self, grace: float = 0.05) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        # Remove the socket only if the path still names the one we bound: a restarted
        # kubelet may have wiped it, and a newer plugin (a new pod) may have bound its own.
        if self._bound is not None and _inode(self.socket) == self._bound:
            self.socket.unlink(missing_ok=True)
        self._bound = None


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
