"""Scope garbage collection: xpud's scopes against the kubelet's PodResources List.

Allocate creates one scope per container (resources.py, server.py); nothing tells the plugin
when that container is gone. So, at start and then periodically, the plugin lists the scopes
it made (labelled with its resource) and the device IDs each container on the node holds
for that resource, and deletes a scope once no container has held exactly its device IDs
for a grace period. The grace period covers the window between Allocate and the container's
creation, in which PodResources does not show the allocation yet; it is counted on this
process's own clock (xpud's may be a manual one), from the first reconciliation that saw
the scope unheld. When the kubelet cannot be asked, nothing is deleted.

Of several scopes for the same device IDs (an init container's devices handed on to the
next container, which gets its own Allocate), only the newest is in use: the others go
after the same grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from grpc import aio

from openxpu_device_plugin.kubeletapi import podresources_pb2 as pr
from openxpu_device_plugin.resources import SCOPE_RESOURCE_LABEL
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import NotFound, Unreachable

log = logging.getLogger(__name__)

# The kubelet's method path (package `v1` upstream; see kubeletapi/podresources.proto).
LIST_METHOD = "/v1.PodResourcesLister/List"
LIST_TIMEOUT = 10.0
HeldSets = set[frozenset[str]]


async def held_device_ids(socket: Path, resource: str) -> HeldSets:
    """The device IDs of `resource` each container on the node holds, one set a container."""
    async with aio.insecure_channel(f"unix://{socket}") as channel:
        list_pods = channel.unary_unary(
            LIST_METHOD,
            request_serializer=pr.ListPodResourcesRequest.SerializeToString,
            response_deserializer=pr.ListPodResourcesResponse.FromString,
        )
        response: pr.ListPodResourcesResponse = await list_pods(
            pr.ListPodResourcesRequest(), timeout=LIST_TIMEOUT
        )
    held: HeldSets = set()
    for pod in response.pod_resources:
        for container in pod.containers:
            ids = frozenset(
                i for d in container.devices if d.resource_name == resource for i in d.device_ids
            )
            if ids:
                held.add(ids)
    return held


def unused(scopes: Iterable[api.Scope], held: HeldSets) -> list[api.Scope]:
    """The scopes no container uses: their device IDs are not held, or a newer scope for
    the same IDs exists."""
    newest: dict[frozenset[str], api.Scope] = {}
    out = []
    for scope in sorted(scopes, key=lambda s: s.created_at, reverse=True):
        ids = frozenset(scope.device_ids)
        if ids in held and ids not in newest:
            newest[ids] = scope
        else:
            out.append(scope)
    return out


class ScopeReconciler:
    def __init__(
        self,
        xpud: AsyncXpudClient,
        pod_resources_socket: Path,
        resource: Callable[[], str],
        grace_period: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.xpud = xpud
        self.pod_resources_socket = pod_resources_socket
        # Read at each pass: a configuration reload may change them.
        self.resource = resource
        self.grace_period = grace_period
        self.clock = clock
        # Scope id -> when a pass first found it unused.
        self._unused_since: dict[str, float] = {}

    async def reconcile(self) -> list[str]:
        """One pass; returns the ids of the scopes it deleted."""
        resource = self.resource()
        scopes = [
            s for s in await self.xpud.scopes() if s.labels.get(SCOPE_RESOURCE_LABEL) == resource
        ]
        try:
            held = await held_device_ids(self.pod_resources_socket, resource)
        except aio.AioRpcError as exc:
            log.warning(
                "cannot list the kubelet's pod resources at %s (%s): no scope deleted",
                self.pod_resources_socket,
                exc.details() or exc.code().name,
            )
            return []
        now = self.clock()
        candidates = {s.id for s in unused(scopes, held)}
        # Forget what was used again, or deleted by someone else.
        self._unused_since = {i: t for i, t in self._unused_since.items() if i in candidates}
        deleted = []
        for scope_id in sorted(candidates):
            since = self._unused_since.setdefault(scope_id, now)
            if now - since < self.grace_period():
                continue
            with contextlib.suppress(NotFound):  # gone meanwhile: the outcome we wanted
                await self.xpud.delete_scope(scope_id)
            del self._unused_since[scope_id]
            deleted.append(scope_id)
        if deleted:
            log.info("deleted %d scope(s) no container holds: %s", len(deleted), ", ".join(deleted))
        return deleted

    async def run(self, interval: Callable[[], float]) -> None:
        """Reconcile now (scopes left from before a restart), then every `interval()` s."""
        while True:
            try:
                await self.reconcile()
            except Unreachable as exc:
                # The health watch reports it; the next pass will find xpud back.
                log.debug("scope reconciliation skipped: %s", exc)
            await asyncio.sleep(interval())
