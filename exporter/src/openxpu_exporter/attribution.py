"""Which pod holds which device: the kubelet's PodResources API (`/v1.PodResourcesLister/List`).

The device plugin advertises whole devices by UUID and shared replicas as `<uuid>::<n>`; both
map back to the physical device here. A device several pods share (replicas) has several
holders. A device nobody holds has none, and its metrics carry no pod labels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import grpc
import grpc.aio

from openxpu_exporter.podresourcesapi import api_pb2, api_pb2_grpc

log = logging.getLogger(__name__)

# The kubelet answers from memory; a slow answer means it is wedged, and a scrape must not wait.
LIST_TIMEOUT_SECONDS = 2.0
# A node with many pods still answers in well under this (the kubelet's own default is 16 MiB).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
REPLICA_SEPARATOR = "::"


class PodRef(NamedTuple):
    pod: str
    namespace: str
    container: str


# Physical device (UUID, or index if the plugin advertised indices) -> its holders, in order.
Attribution = Mapping[str, tuple[PodRef, ...]]


def physical_device(device_id: str) -> str:
    """`XPU-…::3` (a shared replica) and `XPU-…` both name the device `XPU-…`."""
    return device_id.split(REPLICA_SEPARATOR, 1)[0]


def attribute(
    response: api_pb2.ListPodResourcesResponse, resource_names: Iterable[str]
) -> dict[str, tuple[PodRef, ...]]:
    wanted = frozenset(resource_names)
    holders: dict[str, list[PodRef]] = {}
    for pod in response.pod_resources:
        for container in pod.containers:
            ref = PodRef(pod.name, pod.namespace, container.name)
            for devices in container.devices:
                if devices.resource_name not in wanted:
                    continue
                for device_id in devices.device_ids:
                    refs = holders.setdefault(physical_device(device_id), [])
                    # Two replicas of one device in one container are still one holder.
                    if ref not in refs:
                        refs.append(ref)
    return {device: tuple(refs) for device, refs in holders.items()}


class PodResourcesClient:
    """An async client of the kubelet's PodResources socket; one channel, reconnecting."""

    def __init__(self, socket: Path, resource_names: Iterable[str]) -> None:
        self.socket = socket
        self.resource_names = tuple(resource_names)
        self._channel: grpc.aio.Channel | None = None
        self._stub: api_pb2_grpc.PodResourcesListerAsyncStub | None = None

    def _lister(self) -> api_pb2_grpc.PodResourcesListerAsyncStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                f"unix://{self.socket}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)],
            )
            # The .pyi types this as the async stub when given an aio channel.
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    async def list(self) -> dict[str, tuple[PodRef, ...]]:
        """Raises FileNotFoundError without a socket, grpc.aio.AioRpcError on a failed call."""
        if not self.socket.exists():
            raise FileNotFoundError(f"no kubelet PodResources socket at {self.socket}")
        try:
            response = await self._lister().List(
                api_pb2.ListPodResourcesRequest(), timeout=LIST_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError:
            # Next time a new channel, which connects at once: this one would wait out gRPC's
            # reconnect backoff (up to two minutes) after a restarted kubelet is back.
            await self.close()
            raise
        return attribute(response, self.resource_names)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel = None
        self._stub = None
