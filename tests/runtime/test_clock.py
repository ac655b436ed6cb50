"""Physics and leases run on model time: a stepped wall clock moves neither, and a stall
of xpud itself is not caught up for (issue 15 item 5)."""

from __future__ import annotations

import itertools

import pytest

from openxpu_runtime import api
from openxpu_runtime.clock import MAX_GAP_SECONDS, SystemClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.profiles import BUILTIN

pytestmark = pytest.mark.unit
IDLE_WATTS = BUILTIN["x1-2"].idle_watts
HOUR = 3600.0


class SteppingHost:
    """A host whose wall clock the test steps (NTP, an admin) while elapsed time runs on."""

    def __init__(self) -> None:
        self.wall_time = 1_800_000_000.0
        self.elapsed_time = 500.0

    def wall(self) -> float:
        return self.wall_time

    def elapsed(self) -> float:
        return self.elapsed_time

    def run(self, seconds: float) -> None:
        self.wall_time += seconds
        self.elapsed_time += seconds


def engine_on(host: SteppingHost) -> tuple[Engine, str]:
    engine = Engine(
        node="n1",
        profile=BUILTIN["x1-2"],
        clock=SystemClock(wall=host.wall, elapsed=host.elapsed),
        seed=7,
    )
    req = api.ContextRequest(pid=1, name="t", devices=["0"], lease_seconds=30)
    ctx = engine.open_context(req).id
    engine.allocate(ctx, api.AllocationRequest(device="0", size=1 << 30))
    return engine, ctx


@pytest.mark.parametrize("step", [HOUR, -HOUR], ids=["forward", "back"])
def test_a_wall_clock_step_moves_neither_physics_nor_leases(step: float) -> None:
    host = SteppingHost()
    engine, ctx = engine_on(host)
    energy = [engine.telemetry().devices[0].energy_joules]
    for second in range(1, 21):
        host.run(1.0)
        if second == 10:
            host.wall_time += step
        engine.get_context(ctx)  # the workload's heartbeat
        energy.append(engine.telemetry().devices[0].energy_joules)
    gained = [b - a for a, b in itertools.pairwise(energy)]
    # One second of idle power each second: no hour caught up, no freeze after a step back.
    assert gained == pytest.approx([IDLE_WATTS] * 20, rel=0.1)
    assert engine.get_context(ctx).devices[0].memory_used_bytes == 1 << 30
    stamp = engine.telemetry().timestamp
    assert stamp == host.wall_time, "timestamps people read stay on the wall clock"


def test_a_stall_of_xpud_itself_is_not_caught_up() -> None:
    host = SteppingHost()
    engine, ctx = engine_on(host)
    before = engine.telemetry().devices[0].energy_joules
    host.run(HOUR)  # xpud was stopped (SIGSTOP, a paused VM): nobody could heartbeat
    after = engine.telemetry().devices[0].energy_joules
    assert after - before == pytest.approx(IDLE_WATTS * MAX_GAP_SECONDS, rel=0.1)
    assert engine.get_context(ctx).devices[0].memory_used_bytes == 1 << 30, "lease kept"
    for _ in range(31):  # but a lease not renewed while xpud runs (and ticks) expires
        host.run(1.0)
        engine.advance()
    assert engine.processes() == []
