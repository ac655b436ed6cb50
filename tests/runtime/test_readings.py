"""Readings that must not contradict each other (issue 15 item 12d)."""

from __future__ import annotations

import pytest

from openxpu_runtime import api
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.errors import DeviceUnavailable, OutOfMemory
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.testing import XpudProcess


def test_work_between_two_launches_is_not_idle() -> None:
    clock = ManualClock()
    engine = Engine(node="n1", profile=BUILTIN["x1-2"], clock=clock, seed=7)
    ctx = engine.open_context(api.ContextRequest(pid=1, name="t", devices=["0"])).id
    peak = engine.inventory().devices[0].peak_ops_per_second
    engine.launch(ctx, api.LaunchRequest(device="0", ops=peak * 0.6))
    clock.advance(0.8)  # the queue ran dry a moment ago, as between a burner's launches
    d = engine.telemetry().devices[0]
    assert d.utilization_ratio == pytest.approx(0.6) and d.pending_ops == 0
    assert "idle" not in d.throttle_reasons
    clock.advance(1.0)
    assert engine.telemetry().devices[0].throttle_reasons == ["idle"]


@pytest.mark.integration
def test_a_lost_device_reports_no_temperature_and_no_throttling(manual_xpud: XpudProcess) -> None:
    with manual_xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="1", code=79))
        c.advance_clock(1)
        lost, healthy = c.device(1), c.device(0)
    assert lost.health == "Lost"
    assert lost.temperature_celsius is None and lost.throttle_reasons == []
    assert healthy.temperature_celsius is not None and healthy.throttle_reasons == ["idle"]


@pytest.mark.integration
def test_errors_name_the_device_by_uuid_for_the_client_to_render(
    manual_xpud: XpudProcess,
) -> None:
    with manual_xpud.client() as c:
        uuid = c.inventory().devices[1].uuid
        # The process sees host device 1 as its device 0.
        ctx = c.open_context(api.ContextRequest(pid=1, name="t", devices=[uuid]))
        total = c.device(1).memory_total_bytes
        with pytest.raises(OutOfMemory) as oom:
            c.allocate(ctx.id, uuid, total + 1)
        c.inject_fault(api.FaultRequest(device="1", code=48))
        with pytest.raises(DeviceUnavailable) as unavailable:
            c.allocate(ctx.id, uuid, 1)
    for err in (oom.value, unavailable.value):
        assert err.device_uuid == uuid
        assert uuid in err.message and "device 1" not in err.message
