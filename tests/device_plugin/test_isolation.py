"""What a container can do through what Allocate gave it: a real plugin and a real xpud, the
kubelet's side played by its protocol peer, the container's side by raw HTTP on the socket
in the directory Allocate mounted (a workload need not use our client library).

The time-sliced pair is proved here rather than on the lab: it needs two pods' replicas on
one device, which the lab's plugin (distributed allocation policy) does not choose."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from openxpu_device_plugin.kubeletapi import pb
from openxpu_runtime.client import unix_transport
from openxpu_runtime.testing import XpudProcess

from .conftest import StartPlugin, scope_dir
from .kubelet_peer import KubeletPeer

pytestmark = pytest.mark.integration


def container_socket(response: pb.AllocateResponse) -> Path:
    """The xpud socket a container finds at /run/openxpu/xpud.sock, as a host path."""
    (container,) = response.container_responses
    return scope_dir(container) / "xpud.sock"


def open_context(w: httpx.Client) -> str:
    # Hand-made: no memory_limits, whatever XPU_MEMORY_LIMIT_0 says.
    response = w.post("/v1/contexts", json={"pid": 1, "name": "greedy", "devices": ["0"]})
    assert response.status_code == 201, response.text
    context_id: str = response.json()["id"]
    return context_id


def allocate(w: httpx.Client, context_id: str, size: int) -> httpx.Response:
    return w.post(f"/v1/contexts/{context_id}/allocations", json={"device": "0", "size": size})


async def test_a_time_sliced_pair_on_one_device_each_hit_their_own_limit(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin, short_root: Path
) -> None:
    config = short_root / "config.yaml"
    config.write_text("version: v1\nsharing:\n  timeSlicing:\n    replicas: 2\n")
    await start_plugin(file=config)
    await kubelet.wait_devices(lambda d: len(d) == 16)
    with xpud.client() as c:
        device = c.inventory().devices[4]
    share = device.memory_total_bytes // 2
    # Two pods, one replica of device 4 each: two Allocates, as the kubelet makes them.
    first = await kubelet.allocate([f"{device.uuid}::0"])
    second = await kubelet.allocate([f"{device.uuid}::1"])
    sockets = [container_socket(first), container_socket(second)]
    assert sockets[0] != sockets[1]
    clients = [httpx.Client(transport=unix_transport(s), base_url="http://xpud") for s in sockets]
    try:
        contexts = [open_context(w) for w in clients]
        for w, ctx in zip(clients, contexts, strict=True):
            over = allocate(w, ctx, share + 1)
            assert over.status_code == 409, over.text
            assert over.json()["error"]["code"] == "out_of_memory"
        # Each gets its whole slice, not a share of the other's.
        for w, ctx in zip(clients, contexts, strict=True):
            assert allocate(w, ctx, share).status_code == 201
            assert allocate(w, ctx, 1).status_code == 409
            reading = w.get("/v1/devices/0").json()
            assert (reading["memory_total_bytes"], reading["memory_free_bytes"]) == (share, 0)
    finally:
        for w in clients:
            w.close()
    with xpud.client() as c:
        assert c.inventory().devices[4].memory_total_bytes == 2 * share
        used = next(d for d in c.telemetry().devices if d.uuid == device.uuid).memory_used_bytes
    assert used == 2 * share
