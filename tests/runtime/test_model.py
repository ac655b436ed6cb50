"""The device model and engine in-process: physics, memory, faults, events, profiles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.errors import DeviceUnavailable, InvalidArgument, NotFound, OutOfMemory
from openxpu_runtime.profiles import BUILTIN, Profile, ProfileError, device_uuid, load_profile
from openxpu_runtime.state import CorruptStateError, StateStore

pytestmark = pytest.mark.unit
GIB = 1 << 30


def make_engine(
    profile: str = "x1-2",
    seed: int = 7,
    store: StateStore | None = None,
    clock: ManualClock | None = None,
) -> tuple[Engine, ManualClock]:
    clock = clock or ManualClock()
    return Engine(node="n1", profile=BUILTIN[profile], clock=clock, seed=seed, store=store), clock


def ctx(engine: Engine, *devices: str, limits: dict[str, int] | None = None) -> str:
    req = api.ContextRequest(pid=1, name="t", devices=list(devices), memory_limits=limits or {})
    return engine.open_context(req).id


def trace(engine: Engine, clock: ManualClock, steps: int) -> list[tuple[float, float, float]]:
    rows = []
    for _ in range(steps):
        clock.advance(1.0)
        d = engine.telemetry().devices[0]
        rows.append(
            (
                round(d.utilization_ratio, 3),
                round(d.power_watts, 2),
                round(d.temperature_celsius, 2),
            )
        )
    return rows


def test_uuids_are_stable_per_node_and_index() -> None:
    assert device_uuid("n1", 0) == device_uuid("n1", 0)
    assert device_uuid("n1", 0) != device_uuid("n1", 1) != device_uuid("n2", 1)
    assert device_uuid("n1", 3).startswith("XPU-")


def test_topology_follows_link_groups() -> None:
    p = BUILTIN["x1-8"]
    assert [p.link_group_of(i) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [p.numa_node_of(i) for i in range(8)] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert load_profile("x1-8", count=6).link_groups == 2
    assert load_profile("x1-8", count=3).link_groups == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"count": 7}, "multiple of link_groups"),
        ({"tdp_watts": 10}, "tdp_watts must exceed"),
        ({"memory_mib": 0}, "memory_mib must be at least 1"),
        ({"colour": "red"}, "unknown profile fields: colour"),
    ],
)
def test_bad_profiles_are_refused_with_the_field(change: dict[str, object], message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        Profile.from_dict({**BUILTIN["x1-8"].to_dict(), **change})


def test_profile_file_and_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({**BUILTIN["x1-2"].to_dict(), "name": "mine", "count": 4}))
    assert load_profile(str(path)).count == 4
    with pytest.raises(ProfileError, match="known: x1-2, x1-8, x2-64"):
        load_profile("nope")
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(str(path))


def test_load_drives_utilization_then_power_then_temperature() -> None:
    engine, clock = make_engine()
    c = ctx(engine, "0")
    peak = engine.inventory().devices[0].peak_ops_per_second
    engine.launch(c, api.LaunchRequest(device="0", ops=peak * 4.5))
    rows = trace(engine, clock, 8)
    util = [r[0] for r in rows]
    power = [r[1] for r in rows]
    temp = [r[2] for r in rows]
    assert util == [1.0, 1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 0.0]
    # Power tracks load between idle (25 W) and TDP (150 W); temperature lags behind it.
    assert all(149 < p < 151 for p in power[:4]) and all(24 < p < 26 for p in power[5:])
    assert temp[0] < temp[1] < temp[2] < temp[3] < temp[4]
    assert temp[4] > temp[5] > temp[6] > temp[7]
    steady = 30 + 150 * 0.17
    assert temp[3] < steady - 5, "thermal lag: four seconds is well short of steady state"


def test_same_seed_same_trace_other_seed_other_noise() -> None:
    def run(seed: int) -> list[tuple[float, float, float]]:
        engine, clock = make_engine(seed=seed)
        c = ctx(engine, "0")
        engine.launch(c, api.LaunchRequest(device="0", ops=1e13))
        return trace(engine, clock, 4)

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_energy_integrates_power() -> None:
    engine, clock = make_engine()
    start = engine.telemetry().devices[0].energy_joules
    clock.advance(10.0)
    idle = engine.telemetry().devices[0]
    assert idle.energy_joules - start == pytest.approx(25.0 * 10, rel=0.02)


def test_sustained_heat_throttles_clocks_then_trips() -> None:
    hot = Profile.from_dict({**BUILTIN["x1-2"].to_dict(), "thermal_resistance": 0.8})
    # Even throttled (100 W) it settles at 110 C: slowdown first, then the trip.
    clock = ManualClock()
    engine = Engine(node="n1", profile=hot, clock=clock, seed=1)
    c = ctx(engine, "0")
    engine.launch(c, api.LaunchRequest(device="0", ops=hot.throughput_ops(1800) * 600))
    seen: list[api.Event] = []
    engine.subscribe(seen.append)
    throttled_at = None
    for second in range(1, 200):
        clock.advance(1.0)
        d = engine.telemetry().devices[0]
        if throttled_at is None and "hw_thermal_slowdown" in d.throttle_reasons:
            throttled_at = second
            assert d.clock_mhz == pytest.approx(1800 * hot.throttle_factor)
        if d.health == "Unhealthy":
            break
    assert throttled_at is not None
    assert d.active_faults[0].name == "THERMAL_TRIP"
    assert [e.type for e in seen] == ["fault", "health"]


def test_memory_is_finite_and_limits_hold() -> None:
    engine, _ = make_engine()
    c = ctx(engine, "0", "1", limits={"1": GIB})
    total = BUILTIN["x1-2"].memory_bytes
    a = engine.allocate(c, api.AllocationRequest(device="0", size=total - GIB))
    with pytest.raises(OutOfMemory, match=f"out of memory on device {device_uuid('n1', 0)}"):
        engine.allocate(c, api.AllocationRequest(device="0", size=GIB + 1))
    engine.allocate(c, api.AllocationRequest(device="1", size=GIB))
    with pytest.raises(OutOfMemory, match="limit"):
        engine.allocate(c, api.AllocationRequest(device="1", size=1))
    engine.free(c, a.handle)
    with pytest.raises(NotFound, match="already freed"):
        engine.free(c, a.handle)
    assert engine.telemetry().devices[0].memory_used_bytes == 0


def test_context_sees_only_its_devices_and_lease_expiry_frees_memory() -> None:
    engine, clock = make_engine()
    req = api.ContextRequest(pid=1, name="t", devices=["1"], lease_seconds=5)
    c = engine.open_context(req).id
    with pytest.raises(NotFound, match="not visible"):
        engine.allocate(c, api.AllocationRequest(device="0", size=1))
    engine.allocate(c, api.AllocationRequest(device="1", size=GIB))
    clock.advance(4)
    engine.get_context(c)  # a heartbeat
    clock.advance(4)
    assert engine.telemetry().devices[1].memory_used_bytes == GIB
    clock.advance(6)
    assert engine.telemetry().devices[1].memory_used_bytes == 0
    with pytest.raises(NotFound):
        engine.get_context(c)


def test_fault_severities_and_timed_recovery_emit_health_events() -> None:
    engine, clock = make_engine()
    seen: list[api.Event] = []
    engine.subscribe(seen.append)
    engine.inject_fault(api.FaultRequest(device="0", code=63))  # ignore: counted only
    assert engine.telemetry().devices[0].health == "Healthy"
    assert engine.telemetry().devices[0].ecc_corrected_total == 1
    engine.inject_fault(api.FaultRequest(device="0", code=94, recover_after_seconds=3))
    c = ctx(engine, "0")
    with pytest.raises(DeviceUnavailable, match="CONTAINED_ECC"):
        engine.allocate(c, api.AllocationRequest(device="0", size=1))
    clock.advance(3.05)
    engine.advance()
    health = [(e.previous_health, e.health) for e in seen if e.type == "health"]
    assert health == [("Healthy", "Unhealthy"), ("Unhealthy", "Healthy")]
    engine.inject_fault(api.FaultRequest(device="1", code=79))
    assert engine.telemetry().devices[1].health == "Lost"
    assert engine.telemetry().devices[1].power_watts >= 0
    engine.clear_faults("1", None)
    assert engine.telemetry().devices[1].health == "Healthy"


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (api.FaultRequest(device="0", code=999), "unknown fault code 999"),
        (api.FaultRequest(device="9", code=48), "no device '9'"),
        (api.FaultRequest(device="0", code=48, sticky=False), "no default recovery time"),
    ],
)
def test_bad_fault_requests(request_: api.FaultRequest, error: str) -> None:
    engine, _ = make_engine()
    with pytest.raises((InvalidArgument, NotFound), match=error):
        engine.inject_fault(request_)


def test_state_survives_a_new_engine(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    engine, clock = make_engine(store=store)
    c = ctx(engine, "0")
    engine.allocate(c, api.AllocationRequest(device="0", size=GIB))
    engine.inject_fault(api.FaultRequest(device="1", code=48))
    clock.advance(5)
    engine.advance()
    engine.persist()
    energy = engine.telemetry().devices[0].energy_joules
    again, _ = make_engine(store=store, clock=clock)
    t = again.telemetry()
    assert t.devices[0].memory_used_bytes == GIB
    assert t.devices[1].health == "Unhealthy"
    assert t.devices[1].active_faults[0].sticky
    assert t.devices[0].energy_joules == pytest.approx(energy)
    assert again.get_context(c).devices[0].memory_used_bytes == GIB


@pytest.mark.parametrize("content", ["{broken", '{"schema": 1}', '"a string"', "\xff\xfe"])
def test_corrupt_state_is_kept_and_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(CorruptStateError, match="--reset-state") as err:
        StateStore(path).load()
    assert "a copy is kept at" in str(err.value)
    kept = list(tmp_path.glob("state.json.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == content.encode("latin-1")
    assert path.read_bytes() == content.encode("latin-1"), "never silently reset"
