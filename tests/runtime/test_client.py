"""The client against xpuds of other versions, and a workload across an xpud restart."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient
from openxpu_runtime.errors import BadResponse, NotFound, XpuError
from openxpu_runtime.testing import XpudProcess
from openxpu_runtime.xpu import XpuSession

pytestmark = pytest.mark.integration
MIB = 1 << 20
SKEWED_XPUD = Path(__file__).with_name("skewed_xpud.py")


@pytest.fixture
def skewed(short_root: Path, request: pytest.FixtureRequest) -> Iterator[XpudProcess]:
    mode: str = request.param
    proc = XpudProcess(
        short_root, "--profile", "x1-2", command=(sys.executable, str(SKEWED_XPUD), mode)
    ).start()
    yield proc
    proc.stop()


@pytest.mark.parametrize("skewed", ["newer"], indirect=True)
def test_a_newer_xpuds_extra_fields_and_event_types_are_tolerated(skewed: XpudProcess) -> None:
    with skewed.client() as c:
        assert c.version().api == "v1"
        assert len(c.inventory().devices) == 2
        assert c.telemetry().devices[1].health == "Healthy"
        ctx = c.open_context(api.ContextRequest(pid=1, name="skew", devices=["0"])).id
        c.allocate(ctx, "0", MIB)
        c.launch(ctx, "0", 1e6)
        c.synchronize(ctx)
        assert c.heartbeat(ctx).id == ctx
        assert [p.id for p in c.processes()] == [ctx]
        assert c.device(0).memory_used_bytes == MIB
        assert c.inject_fault(api.FaultRequest(device="1", code=48)).health == "Unhealthy"
        assert c.clear_faults("1").cleared == [48]
        events = c.events()
        first = [next(events) for _ in range(3)]
        events.close()
    assert [(e.type, e.device_index) for e in first] == [
        ("migration", 0),
        ("snapshot", 0),
        ("snapshot", 1),
    ]

    async def agent() -> list[str]:
        async with AsyncXpudClient(skewed.socket) as ac:
            assert (await ac.telemetry()).devices[0].memory_used_bytes == MIB
            types = []
            async for event in ac.events():
                types.append(event.type)
                if len(types) == 3:
                    return types
        return types

    assert asyncio.run(agent()) == ["migration", "snapshot", "snapshot"]
    with XpuSession(socket=skewed.socket, env={"XPU_VISIBLE_DEVICES": "1"}) as xpu:
        xpu.free(xpu.malloc(MIB))


@pytest.mark.parametrize("skewed", ["broken"], indirect=True)
def test_an_answer_the_client_cannot_read_is_an_xpu_error(skewed: XpudProcess) -> None:
    with skewed.client() as c:
        assert c.version().api == "v1"  # no `health` here: still fine
        with pytest.raises(BadResponse, match=r"cannot read.*health"):
            c.device(0)
        with pytest.raises(XpuError):  # what node agents catch
            next(c.events())

    async def agent() -> None:
        async with AsyncXpudClient(skewed.socket) as ac:
            with pytest.raises(BadResponse, match="health"):
                await ac.inventory()

    asyncio.run(agent())


@pytest.mark.parametrize("skewed", ["older"], indirect=True)
def test_an_error_status_on_the_event_stream_raises_its_xpu_error(skewed: XpudProcess) -> None:
    with skewed.client() as c, pytest.raises(NotFound, match="Not Found"):
        next(c.events())

    async def agent() -> None:
        async with AsyncXpudClient(skewed.socket) as ac:
            with pytest.raises(NotFound, match="Not Found"):
                await anext(ac.events())

    asyncio.run(agent())


def test_a_workload_keeps_its_memory_across_an_xpud_restart(short_root: Path) -> None:
    xpud = XpudProcess(short_root, "--profile", "x1-2").start()
    lease = 3.0  # a beat every second
    try:
        with XpuSession(socket=xpud.socket, env={}, lease_seconds=lease) as xpu:
            buf = xpu.malloc(8 * MIB)
            xpud.stop()
            time.sleep(lease / 2)  # beats fail while xpud is away
            xpud.start()
            time.sleep(lease * 1.5)  # the restored lease would have run out without a beat
            with xpud.client() as c:
                assert [p.id for p in c.processes()] == [xpu.context_id]
                assert c.device(0).memory_used_bytes == 8 * MIB
            xpu.free(buf)
            xpu.free(xpu.malloc(MIB))
        with xpud.client() as c:
            assert c.processes() == []
    finally:
        xpud.stop()
