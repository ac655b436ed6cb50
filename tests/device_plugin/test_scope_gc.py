"""Scope garbage collection: a real xpud's scopes against the kubelet's PodResources List,
served by a PodResources peer built from the upstream API definition (the exporter's stubs),
so the plugin's own subset of it is checked against the real thing on the wire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from exporter.support import FakeKubelet, pod

from openxpu_device_plugin.scopes import ScopeReconciler
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.testing import XpudProcess

from .conftest import StartPlugin, eventually, scope_dir
from .kubelet_peer import KubeletPeer

pytestmark = pytest.mark.integration

RESOURCE = "openxpu.io/xpu"
GRACE = 60.0


@pytest.fixture
def pod_resources(short_root: Path) -> Iterator[FakeKubelet]:
    peer = FakeKubelet(short_root / "pod-resources.sock").start()
    yield peer
    peer.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reconciler(
    client: AsyncXpudClient, socket: Path, clock: Clock, **kwargs: Any
) -> ScopeReconciler:
    """The plugin's reconciler for RESOURCE with a GRACE-second period on `clock`."""
    return ScopeReconciler(client, socket, lambda: RESOURCE, lambda: GRACE, clock, **kwargs)


def device0_scopes(xpud: XpudProcess, count: int) -> tuple[str, list[str]]:
    """Device 0's UUID and `count` scopes of it, oldest first, as Allocate labels them."""
    with xpud.client() as c:
        uuid = c.inventory().devices[0].uuid
        req = api.ScopeRequest(
            devices=[api.ScopeDeviceRequest(id=uuid)], labels={"resource": RESOURCE}
        )
        return uuid, [c.create_scope(req).id for _ in range(count)]


def scope_ids(xpud: XpudProcess) -> set[str]:
    with xpud.client() as c:
        return {s.id for s in c.scopes()}


async def test_a_scope_goes_once_no_container_held_it_for_the_grace_period(
    xpud: XpudProcess, pod_resources: FakeKubelet
) -> None:
    with xpud.client() as c:
        uuids = [d.uuid for d in c.inventory().devices]

        def scope(*ids: str, resource: str = RESOURCE) -> str:
            req = api.ScopeRequest(
                devices=[api.ScopeDeviceRequest(id=i) for i in ids], labels={"resource": resource}
            )
            return c.create_scope(req).id

        held = scope(uuids[0], uuids[1])
        not_started = scope(uuids[2])
        gone = scope(uuids[3])
        other_plugin = scope(uuids[4], resource="openxpu.io/xpu.other")
    pod_resources.pods = [
        pod("train", "ml", {"main": [uuids[1], uuids[0]]}),
        # Another resource's devices with the same IDs do not hold our scope.
        pod("other", "ml", {"main": [uuids[3]]}, resource="example.com/other"),
    ]
    clock = Clock()
    async with AsyncXpudClient(xpud.socket) as client:
        gc = reconciler(client, pod_resources.socket_path, clock)
        assert await gc.reconcile() == []  # first seen unheld now: the grace period starts
        clock.now = 30.0
        # The container of `not_started` is created: PodResources lists it from now on.
        pod_resources.pods.append(pod("late", "ml", {"main": [uuids[2]]}))
        assert await gc.reconcile() == []
        clock.now = GRACE - 0.1
        assert await gc.reconcile() == []
        clock.now = GRACE
        assert await gc.reconcile() == [gone]
        assert scope_ids(xpud) == {held, not_started, other_plugin}
        # Its container ends: it goes a grace period later, not at once.
        pod_resources.pods.pop()
        clock.now = 100.0
        assert await gc.reconcile() == []
        clock.now = 100.0 + GRACE
        assert await gc.reconcile() == [not_started]
        assert scope_ids(xpud) == {held, other_plugin}


async def test_of_two_scopes_for_one_containers_devices_the_newer_stays(
    xpud: XpudProcess, pod_resources: FakeKubelet
) -> None:
    """An init container's devices handed on to the app container: two Allocates, two
    scopes, one container holding the IDs; the init container's (older) scope goes."""
    uuid, (init, app) = device0_scopes(xpud, 2)
    pod_resources.pods = [pod("p", "ml", {"app": [uuid]})]
    clock = Clock()
    async with AsyncXpudClient(xpud.socket) as client:
        gc = reconciler(client, pod_resources.socket_path, clock)
        assert await gc.reconcile() == []
        clock.now = GRACE
        assert await gc.reconcile() == [init]
    assert scope_ids(xpud) == {app}


async def test_nothing_is_deleted_while_the_kubelet_cannot_be_asked(
    xpud: XpudProcess, short_root: Path
) -> None:
    _, (kept,) = device0_scopes(xpud, 1)
    clock = Clock()
    async with AsyncXpudClient(xpud.socket) as client:
        gc = reconciler(client, short_root / "no-kubelet.sock", clock)
        for clock.now in (0.0, GRACE, 10 * GRACE):
            assert await gc.reconcile() == []
    assert scope_ids(xpud) == {kept}


async def test_a_spare_is_left_alone_and_hides_no_containers_scope(
    xpud: XpudProcess, pod_resources: FakeKubelet
) -> None:
    """The plugin's spare scope for an ID is newer than the scope of the container holding
    that ID: counted as a scope, it would make the container's look like a duplicate."""
    uuid, (used, spare) = device0_scopes(xpud, 2)
    pod_resources.pods = [pod("p", "ml", {"main": [uuid]})]
    clock = Clock()
    async with AsyncXpudClient(xpud.socket) as client:
        gc = reconciler(
            client, pod_resources.socket_path, clock, spare=lambda scope_id: scope_id == spare
        )
        for clock.now in (0.0, GRACE, 10 * GRACE):
            assert await gc.reconcile() == []
    assert scope_ids(xpud) == {used, spare}


async def test_the_plugin_reconciles_the_scopes_its_allocate_made(
    xpud: XpudProcess,
    kubelet: KubeletPeer,
    start_plugin: StartPlugin,
    pod_resources: FakeKubelet,
) -> None:
    """The plugin's own loop, end to end: two containers allocated in one request, one of
    them started; the other's scope goes after the (short) grace period, while the started
    one's and the spares stay."""
    with xpud.client() as c:
        uuids = [d.uuid for d in c.inventory().devices]
    pod_resources.pods = [pod("running", "ml", {"main": [uuids[0], uuids[1]]})]
    await start_plugin(scope_grace_period="1")
    await kubelet.wait_devices(lambda d: len(d) == 8)
    await eventually("two spare scopes for each device", lambda: len(scope_ids(xpud)) == 16)
    spares = scope_ids(xpud)
    running, not_started = (
        await kubelet.allocate([uuids[0], uuids[1]], [uuids[2], uuids[3]])
    ).container_responses
    kept = scope_dir(running).name
    gone = scope_dir(not_started).name
    assert scope_ids(xpud) == spares | {kept, gone}
    await eventually("the unused scope deleted", lambda: gone not in scope_ids(xpud))
    assert scope_ids(xpud) == spares | {kept}


async def test_the_scope_handed_out_last_stays_even_if_it_is_older(
    xpud: XpudProcess, pod_resources: FakeKubelet
) -> None:
    """A spare made while an Allocate asked xpud itself can be older than that Allocate's
    scope and still be what the next container of the same ID gets: the plugin's word on
    what it handed out last decides, not the age."""
    uuid, (handed_last, newer) = device0_scopes(xpud, 2)
    pod_resources.pods = [pod("p", "ml", {"main": [uuid]})]
    clock = Clock()
    async with AsyncXpudClient(xpud.socket) as client:
        gc = reconciler(
            client,
            pod_resources.socket_path,
            clock,
            handed=lambda ids: handed_last if ids == frozenset({uuid}) else None,
        )
        assert await gc.reconcile() == []
        clock.now = GRACE
        assert await gc.reconcile() == [newer]
    assert scope_ids(xpud) == {handed_last}
