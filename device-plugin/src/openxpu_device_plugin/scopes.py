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

Allocate is on the kubelet's admission path, and a round trip to xpud costs more than the
whole of the rest of it. So the plugin keeps spare scopes made ahead for every ID it
advertises (`SparePool`): a one-ID request (one XPU, one replica) takes one of its spares
and the pool makes the next once the answer is sent; other requests ask xpud there and
then. Spares are the plugin's, not unused: the reconciler leaves them alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from grpc import aio

from openxpu_device_plugin.kubeletapi import podresources_pb2 as pr
from openxpu_device_plugin.resources import MAX_SPARES, SCOPE_RESOURCE_LABEL
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import NotFound, Unreachable

log = logging.getLogger(__name__)

# The kubelet's method path (package `v1` upstream; see kubeletapi/podresources.proto).
LIST_METHOD = "/v1.PodResourcesLister/List"
LIST_TIMEOUT = 10.0
HeldSets = set[frozenset[str]]
# Sets of device IDs whose last handed-out scope is remembered: far more than a node's
# containers at once (older ones are forgotten first; the newest scope then decides).
MAX_HANDED = 4096
# Silence after an Allocate before spares are made again: longer than the kubelet takes
# between two pods it admits back to back, shorter than what it takes for pods to end.
SETTLE = 0.005


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


def _still_served(scope: api.Scope) -> bool:
    """Its socket is still there (a stat, not a round trip): xpud did not lose the scope (a
    restart with a reset state) since the pool made it."""
    return scope.socket is not None and os.path.exists(scope.socket)


class SparePool:
    """xpud's scopes as Allocate obtains them: a spare made ahead if one matches the
    request exactly, else a new one. `run()` keeps spares for each of `wanted()`: two
    while that stays within `MAX_SPARES` scopes (`spares_per_id`), because the kubelet
    allocates an init container's devices and then its app container's, the same IDs back
    to back, each container with its own scope.

    Making a spare costs xpud a few milliseconds of CPU and the plugin a round trip on the
    loop that answers Allocate; on a node with few cores, that work done while an answer is
    being sent, or while the next one comes in, is what the answers wait for. The kubelet
    admits pods one after the other, Allocates back to back, at most one pod per free
    device: the spares serve such a burst, and are made again once it is over, when no
    Allocate has been answered for `SETTLE` seconds (`answering()`), all in one pass."""

    def __init__(
        self, xpud: AsyncXpudClient, wanted: Callable[[], dict[str, api.ScopeRequest]]
    ) -> None:
        self.xpud = xpud
        self.wanted = wanted
        self._spares: dict[str, list[tuple[api.ScopeRequest, api.Scope]]] = {}
        self._changed = asyncio.Event()
        # Set by refresh(): the next pass also asks xpud which spares it still has.
        self._verify = True
        # What `wanted()` said at the last refresh(): only what refresh() is called for
        # changes it, and working it out for every ID again each pass costs as much as an
        # Allocate.
        self._wanted: dict[str, api.ScopeRequest] | None = None
        # The `_wanted` the spares were last matched against.
        self._matched: dict[str, api.ScopeRequest] | None = None
        self._answering = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._last_answered = 0.0
        # The scope last handed out per set of device IDs, oldest entry first: the live one,
        # whatever its age (a spare made while an Allocate asked xpud itself may be older
        # than that Allocate's scope, yet reach the next container of the same IDs).
        self._handed: dict[frozenset[str], str] = {}

    def last_handed(self, ids: frozenset[str]) -> str | None:
        return self._handed.get(ids)

    def _hand_out(self, req: api.ScopeRequest, scope: api.Scope) -> api.Scope:
        ids = frozenset(d.id for d in req.devices)
        self._handed.pop(ids, None)
        self._handed[ids] = scope.id
        if len(self._handed) > MAX_HANDED:
            for stale in list(self._handed)[: MAX_HANDED // 2]:
                del self._handed[stale]
        return scope

    def holds(self, scope_id: str) -> bool:
        return any(scope.id == scope_id for spares in self._spares.values() for _, scope in spares)

    def refresh(self) -> None:
        """What is wanted may have changed (configuration, inventory, health), or xpud may
        have restarted without its state: check the spares again."""
        self._verify = True
        self._wanted = None
        self._changed.set()

    def answering(self) -> Callable[[], None]:
        """An Allocate is being answered: no spare is made until the returned callable has
        been called (once the answer is sent)."""
        self._answering += 1
        self._quiet.clear()

        def answered() -> None:
            self._answering -= 1
            self._last_answered = time.monotonic()
            if not self._answering:
                self._quiet.set()

        return answered

    async def _settled(self) -> bool:
        """Wait until no Allocate is being answered and none was for SETTLE seconds; False
        as soon as a spare is taken or refresh() called meanwhile (the pass starts over)."""
        while not self._changed.is_set():
            await self._quiet.wait()
            wait = self._last_answered + SETTLE - time.monotonic()
            if wait <= 0:
                return not self._changed.is_set()
            await asyncio.sleep(wait)
        return False

    async def create_scope(self, req: api.ScopeRequest) -> api.Scope:
        if len(req.devices) == 1:
            spares = self._spares.get(req.devices[0].id)
            if spares:
                self._changed.set()
                made_for, scope = spares.pop(0)
                if made_for == req and _still_served(scope):
                    return self._hand_out(req, scope)
        return self._hand_out(req, await self.xpud.create_scope(req))

    async def delete_scope(self, scope_id: str) -> None:
        await self.xpud.delete_scope(scope_id)

    async def run(self, retry: float = 1.0) -> None:
        while True:
            try:
                await self.fill()
            except Unreachable as exc:
                log.debug("spare scopes not made: %s", exc)
                await asyncio.sleep(retry)
                continue
            await self._changed.wait()
            self._changed.clear()

    async def fill(self) -> None:
        """One pass: drop spares that no longer match (and, after refresh(), those xpud no
        longer has), make those missing. Allocate may take a spare at any await: the lists
        are the truth."""
        await self._quiet.wait()
        if self._wanted is None:
            self._wanted = self.wanted()
        wanted = self._wanted
        depth = spares_per_id(len(wanted))
        if self._verify:
            self._verify = False
            live = {s.id for s in await self.xpud.scopes()}
            for spares in self._spares.values():
                spares[:] = [(req, scope) for req, scope in spares if scope.id in live]
        if self._matched is not wanted:  # only refresh() changes what is wanted
            for device_id, spares in list(self._spares.items()):
                want = wanted.get(device_id)
                stale = [scope for req, scope in spares if req != want]
                spares[:] = [(req, scope) for req, scope in spares if req == want]
                if want is None:
                    del self._spares[device_id]
                for scope in stale:
                    with contextlib.suppress(NotFound):
                        await self.xpud.delete_scope(scope.id)
            self._matched = wanted
        # An ID left with no spare (an init container and its container took both, or a
        # stream of Allocates outlasts the spares) gets one now, even while the next
        # Allocates come in: one waiting for xpud itself would wait longer.
        for device_id, req in wanted.items():
            spares = self._spares.setdefault(device_id, [])
            if not spares:
                spares.append((req, await self.xpud.create_scope(req)))
        # The others once Allocates have settled.
        for device_id, req in wanted.items():
            spares = self._spares.setdefault(device_id, [])
            while len(spares) < depth:
                if not await self._settled():
                    return
                spares.append((req, await self.xpud.create_scope(req)))
        # A pass leaves a round trip's worth of objects per spare: collected now, not by the
        # collector in the middle of the next Allocate (a young collection costs it 0.3 ms,
        # a few Allocates in a hundred).
        if self._quiet.is_set():
            gc.collect(1)


def spares_per_id(ids: int) -> int:
    """Two spares an ID while they stay within MAX_SPARES scopes, else one (`wanted()` is
    empty beyond MAX_SPARES IDs)."""
    return 2 if 2 * ids <= MAX_SPARES else 1


def unused(
    scopes: Iterable[api.Scope],
    held: HeldSets,
    handed: Callable[[frozenset[str]], str | None] = lambda ids: None,
) -> list[api.Scope]:
    """The scopes no container uses: their device IDs are not held, or another scope for
    the same IDs is the one the plugin handed out last (the newest, if it does not know:
    it restarted)."""
    scopes = sorted(scopes, key=lambda s: s.created_at, reverse=True)
    existing = {s.id for s in scopes}
    live: dict[frozenset[str], str] = {}
    for scope in scopes:
        ids = frozenset(scope.device_ids)
        if ids in held and ids not in live:
            known = handed(ids)
            live[ids] = known if known in existing else scope.id
    return [s for s in scopes if live.get(frozenset(s.device_ids)) != s.id]


class ScopeReconciler:
    def __init__(
        self,
        xpud: AsyncXpudClient,
        pod_resources_socket: Path,
        resource: Callable[[], str],
        grace_period: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        spare: Callable[[str], bool] = lambda scope_id: False,
        handed: Callable[[frozenset[str]], str | None] = lambda ids: None,
    ) -> None:
        self.xpud = xpud
        self.handed = handed
        # A spare is no container's yet, and newer than the scope of the container that
        # holds the same ID: left out before anything is compared.
        self.spare = spare
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
            s
            for s in await self.xpud.scopes()
            if s.labels.get(SCOPE_RESOURCE_LABEL) == resource and not self.spare(s.id)
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
        candidates = {s.id for s in unused(scopes, held, self.handed)}
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
