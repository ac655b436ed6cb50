"""The kubelet's side of the device plugin protocol, for tests: a real Registration server on
`kubelet.sock` that, like the kubelet, dials the plugin back during Register, asks for its
options, opens ListAndWatch and keeps the latest device list; plus the client calls the
kubelet makes (GetPreferredAllocation, Allocate). A protocol peer, not a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc import aio

from openxpu_device_plugin.kubeletapi import API_VERSION, pb, rpc

Devices = dict[str, str]  # ID -> health


@dataclass
class Registration:
    request: pb.RegisterRequest
    options: pb.DevicePluginOptions
    at: float
    channel: aio.Channel
    stub: rpc.DevicePluginAsyncStub
    updates: list[tuple[float, Devices]] = field(default_factory=list)
    topology: dict[str, list[int]] = field(default_factory=dict)
    stream_task: asyncio.Task[None] | None = None


class KubeletPeer(rpc.RegistrationServicer):
    def __init__(self, plugin_dir: Path) -> None:
        self.dir = plugin_dir
        self.registrations: list[Registration] = []
        self._server: aio.Server | None = None
        self._changed = asyncio.Condition()

    @property
    def socket(self) -> Path:
        return self.dir / "kubelet.sock"

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        server = aio.server()
        rpc.add_RegistrationServicer_to_server(self, server)
        server.add_insecure_port(f"unix://{self.socket}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        for r in self.registrations:
            if r.stream_task:
                r.stream_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await r.stream_task
            await r.channel.close()
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def restart(self) -> float:
        """As a kubelet restart: stop, wipe the plugin sockets, re-create kubelet.sock.
        Returns the monotonic time kubelet.sock was back."""
        await self.stop()
        for p in self.dir.glob("*.sock"):
            p.unlink()
        await self.start()
        return time.monotonic()

    # -- the Registration service --------------------------------------------------------

    async def Register(
        self,
        request: pb.RegisterRequest,
        context: aio.ServicerContext[pb.RegisterRequest, pb.Empty],
    ) -> pb.Empty:
        if request.version != API_VERSION:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad version {request.version}")
        # Like the kubelet: dial the plugin's endpoint (relative to our dir) before answering.
        channel = aio.insecure_channel(f"unix://{self.dir / request.endpoint}")
        stub = rpc.DevicePluginStub(channel)
        options = await stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        reg = Registration(request, options, time.monotonic(), channel, stub)
        reg.stream_task = asyncio.create_task(self._list_and_watch(reg))
        async with self._changed:
            self.registrations.append(reg)
            self._changed.notify_all()
        return pb.Empty()

    async def _list_and_watch(self, reg: Registration) -> None:
        with contextlib.suppress(aio.AioRpcError):
            async for resp in reg.stub.ListAndWatch(pb.Empty()):
                reg.updates.append((time.monotonic(), {d.ID: d.health for d in resp.devices}))
                reg.topology = {d.ID: [n.ID for n in d.topology.nodes] for d in resp.devices}
                async with self._changed:
                    self._changed.notify_all()

    # -- what tests wait on and call ------------------------------------------------------

    @property
    def current(self) -> Registration:
        assert self.registrations, "the plugin never registered"
        return self.registrations[-1]

    async def wait_for(self, check: Callable[[], bool], within: float = 10.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(check), within)

    async def wait_registered(self, count: int = 1, within: float = 10.0) -> Registration:
        await self.wait_for(lambda: len(self.registrations) >= count, within)
        return self.registrations[count - 1]

    async def wait_devices(
        self, check: Callable[[Devices], bool], within: float = 10.0
    ) -> tuple[float, Devices]:
        def ok() -> bool:
            updates = self.registrations[-1].updates if self.registrations else []
            return bool(updates) and check(updates[-1][1])

        await self.wait_for(ok, within)
        return self.current.updates[-1]

    async def allocate(self, *containers: list[str]) -> pb.AllocateResponse:
        req = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=c) for c in containers]
        )
        return await self.current.stub.Allocate(req, timeout=5)

    async def preferred(self, available: list[str], must: list[str], size: int) -> list[str]:
        req = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must,
                    allocation_size=size,
                )
            ]
        )
        resp = await self.current.stub.GetPreferredAllocation(req, timeout=5)
        return list(resp.container_responses[0].deviceIDs)
