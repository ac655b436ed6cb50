"""One emulated device: its physics (load → power → temperature → clocks) and fault state.

The model advances in fixed sub-steps so that a trace depends only on the seed and on the
times it is read at, never on how often a background loop happened to run.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TypedDict

from openxpu_runtime.faults import (
    HEALTH_BY_SEVERITY,
    THERMAL_TRIP,
    Effect,
    FaultKind,
    Health,
    Severity,
    lookup,
)
from openxpu_runtime.profiles import Profile

SUBSTEP_SECONDS = 0.1
# Throttling ends this far below the slowdown threshold, so clocks do not flap.
THROTTLE_HYSTERESIS_CELSIUS = 5.0


class FaultState(TypedDict):
    code: int
    sticky: bool
    injected_at: float
    recover_at: float | None
    message: str


class DeviceState(TypedDict):
    """What survives an xpud restart."""

    uuid: str
    energy_joules: float
    temperature_celsius: float
    ecc_corrected: int
    ecc_uncorrected: int
    errors: dict[str, int]
    last_error_code: int
    faults: list[FaultState]


@dataclass
class Work:
    context_id: str
    remaining_ops: float
    matrix: bool


@dataclass
class BusySlice:
    start: float
    end: float
    busy: float
    matrix_busy: float
    energy: float


@dataclass
class FaultChange:
    """A fault raised or recovered by the model itself (thermal trip, timed recovery)."""

    code: int
    raised: bool


@dataclass
class Device:
    index: int
    uuid: str
    profile: Profile
    rng: random.Random
    sim_time: float
    temperature: float = 0.0
    power: float = 0.0
    energy: float = 0.0
    clock_mhz: float = 0.0
    thermal_throttle: bool = False
    memory_used: int = 0
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    last_error_code: int = 0
    faults: dict[int, FaultState] = field(default_factory=dict)
    queue: deque[Work] = field(default_factory=deque)
    slices: deque[BusySlice] = field(default_factory=deque)

    @classmethod
    def fresh(cls, index: int, uuid: str, profile: Profile, seed: int, now: float) -> Device:
        dev = cls(index, uuid, profile, random.Random(seed * 1_000_003 + index), now)
        dev.temperature = profile.ambient_celsius + profile.idle_watts * profile.thermal_resistance
        dev.power = profile.idle_watts
        dev.clock_mhz = profile.idle_clock_mhz
        return dev

    # -- health ---------------------------------------------------------------------------

    @property
    def health(self) -> Health:
        worst = max((lookup(f["code"]).severity for f in self.faults.values()), default=None)
        return Health.HEALTHY if worst is None else HEALTH_BY_SEVERITY[worst]

    @property
    def operational(self) -> bool:
        return self.health in (Health.HEALTHY, Health.DEGRADED)

    def health_reason(self) -> str:
        active = [lookup(c) for c in sorted(self.faults)]
        return "; ".join(f"{k.code} {k.name}: {k.description}" for k in active)

    def apply_fault(
        self, kind: FaultKind, now: float, sticky: bool, recover_after: float | None, message: str
    ) -> None:
        self.errors[kind.code] += 1
        self.last_error_code = kind.code
        if kind.effect is Effect.ECC_CORRECTED:
            self.ecc_corrected += 1
        elif kind.effect is Effect.ECC_UNCORRECTED:
            self.ecc_uncorrected += 1
        elif kind.effect is Effect.THERMAL:
            self.temperature = max(self.temperature, self.profile.shutdown_celsius)
        elif kind.effect is Effect.LOST:
            self.queue.clear()
        if kind.severity is Severity.IGNORE:
            return  # counted, never held against the device
        self.faults[kind.code] = FaultState(
            code=kind.code,
            sticky=sticky,
            injected_at=now,
            recover_at=None if sticky or recover_after is None else now + recover_after,
            message=message or kind.description,
        )

    # -- physics --------------------------------------------------------------------------

    def advance(self, until: float) -> list[FaultChange]:
        changes: list[FaultChange] = []
        while self.sim_time < until - 1e-9:
            dt = min(SUBSTEP_SECONDS, until - self.sim_time)
            changes.extend(self._step(dt))
        return changes

    def _step(self, dt: float) -> list[FaultChange]:
        p = self.profile
        start = self.sim_time
        if p.slowdown_celsius <= self.temperature:
            self.thermal_throttle = True
        elif self.temperature < p.slowdown_celsius - THROTTLE_HYSTERESIS_CELSIUS:
            self.thermal_throttle = False

        busy = matrix_busy = 0.0
        lost = self.health is Health.LOST
        if self.queue and self.operational:
            self.clock_mhz = p.max_clock_mhz * (p.throttle_factor if self.thermal_throttle else 1)
            rate = p.throughput_ops(self.clock_mhz)
            capacity = rate * dt
            while self.queue and capacity > 0:
                work = self.queue[0]
                done = min(work.remaining_ops, capacity)
                work.remaining_ops -= done
                capacity -= done
                busy += done / rate
                if work.matrix:
                    matrix_busy += done / rate
                if work.remaining_ops <= 0:
                    self.queue.popleft()
        else:
            self.clock_mhz = 0.0 if lost else p.idle_clock_mhz

        if lost:
            self.power = 0.0
        else:
            load = (busy / dt) * (self.clock_mhz / p.max_clock_mhz)
            noise = self.rng.gauss(0.0, p.power_noise_watts) if p.power_noise_watts else 0.0
            self.power = max(0.0, p.idle_watts + (p.tdp_watts - p.idle_watts) * load + noise)
        self.energy += self.power * dt
        target = p.ambient_celsius + self.power * p.thermal_resistance
        self.temperature = target + (self.temperature - target) * math.exp(
            -dt / p.thermal_tau_seconds
        )
        self.sim_time = start + dt
        self._record(BusySlice(start, self.sim_time, busy, matrix_busy, self.power * dt))
        return self._check_faults()

    def _record(self, piece: BusySlice) -> None:
        # Frequent reads advance in slivers; merging them into sub-step sized slices keeps the
        # window a dozen slices long however often telemetry is read.
        last = self.slices[-1] if self.slices else None
        if last and last.end == piece.start and piece.end - last.start <= SUBSTEP_SECONDS + 1e-9:
            last.end = piece.end
            last.busy += piece.busy
            last.matrix_busy += piece.matrix_busy
            last.energy += piece.energy
        else:
            self.slices.append(piece)

    def _check_faults(self) -> list[FaultChange]:
        changes: list[FaultChange] = []
        p = self.profile
        if self.temperature >= p.shutdown_celsius and THERMAL_TRIP not in self.faults:
            kind = lookup(THERMAL_TRIP)
            self.apply_fault(kind, self.sim_time, False, kind.recover_after_seconds, "")
            changes.append(FaultChange(THERMAL_TRIP, raised=True))
        for code, fault in list(self.faults.items()):
            due = fault["recover_at"] is not None and fault["recover_at"] <= self.sim_time
            # A thermal trip also waits until the device has cooled below the slowdown limit.
            cooled = code != THERMAL_TRIP or self.temperature < p.slowdown_celsius
            if due and cooled:
                del self.faults[code]
                changes.append(FaultChange(code, raised=False))
        return changes

    # -- readings -------------------------------------------------------------------------

    def readings(self, window: float) -> tuple[float, float, float]:
        """Utilization, matrix utilization and average power over the trailing window —
        power as management tools report it, averaged rather than instantaneous."""
        lo = self.sim_time - window
        while self.slices and self.slices[0].end <= lo:
            self.slices.popleft()
        busy = matrix = energy = covered = 0.0
        for s in self.slices:
            inside = min(s.end, self.sim_time) - max(s.start, lo)
            share = inside / (s.end - s.start)
            busy += s.busy * share
            matrix += s.matrix_busy * share
            energy += s.energy * share
            covered += inside
        power = energy / covered if covered else self.power
        return min(1.0, busy / window), min(1.0, matrix / window), power

    def pending_ops(self, context_id: str | None = None) -> float:
        return sum(
            w.remaining_ops for w in self.queue if context_id is None or w.context_id == context_id
        )

    def throttle_reasons(self, utilization: float) -> list[str]:
        """Why clocks are below maximum. `utilization` is over the reading window: an
        instant between two launches is not an idle device."""
        if self.health is Health.LOST:
            return []  # no clocks at all: nothing is throttling them
        reasons = []
        if not self.queue and utilization == 0:
            reasons.append("idle")
        if self.thermal_throttle:
            reasons.append("hw_thermal_slowdown")
        if THERMAL_TRIP in self.faults:
            reasons.append("hw_thermal_shutdown")
        return reasons

    # -- persistence ----------------------------------------------------------------------

    def to_state(self) -> DeviceState:
        return DeviceState(
            uuid=self.uuid,
            energy_joules=self.energy,
            temperature_celsius=self.temperature,
            ecc_corrected=self.ecc_corrected,
            ecc_uncorrected=self.ecc_uncorrected,
            errors={str(code): n for code, n in sorted(self.errors.items())},
            last_error_code=self.last_error_code,
            faults=list(self.faults.values()),
        )

    def restore(self, state: DeviceState) -> None:
        self.energy = state["energy_joules"]
        self.temperature = state["temperature_celsius"]
        self.ecc_corrected = state["ecc_corrected"]
        self.ecc_uncorrected = state["ecc_uncorrected"]
        self.errors = Counter({int(code): n for code, n in state["errors"].items()})
        self.last_error_code = state["last_error_code"]
        self.faults = {f["code"]: f for f in state["faults"]}
