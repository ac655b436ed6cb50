"""The fault catalog: error codes with a severity, like the XID codes users know."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.IntEnum):
    IGNORE = 0  # counted and reported; the device stays healthy
    DEGRADE = 1  # the device works, slower or with a warning
    UNHEALTHY = 2  # the device must not take new work
    FATAL = 3  # the device is lost until reset


class Health(enum.StrEnum):
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    UNHEALTHY = "Unhealthy"
    LOST = "Lost"


HEALTH_BY_SEVERITY = {
    Severity.IGNORE: Health.HEALTHY,
    Severity.DEGRADE: Health.DEGRADED,
    Severity.UNHEALTHY: Health.UNHEALTHY,
    Severity.FATAL: Health.LOST,
}


class Effect(enum.Enum):
    NONE = "none"
    ECC_CORRECTED = "ecc_corrected"
    ECC_UNCORRECTED = "ecc_uncorrected"
    THERMAL = "thermal"
    LOST = "lost"


@dataclass(frozen=True)
class FaultKind:
    code: int
    name: str
    description: str
    severity: Severity
    sticky: bool
    # Timed recovery for non-sticky faults; None means "only when cleared".
    recover_after_seconds: float | None
    effect: Effect = Effect.NONE


CATALOG: dict[int, FaultKind] = {
    k.code: k
    for k in (
        FaultKind(
            13,
            "ENGINE_EXCEPTION",
            "compute engine exception in a workload",
            Severity.IGNORE,
            False,
            None,
        ),
        FaultKind(31, "MMU_FAULT", "memory page fault in a workload", Severity.IGNORE, False, None),
        FaultKind(43, "ENGINE_RESET", "engine hung and was reset", Severity.DEGRADE, False, 30.0),
        FaultKind(
            48,
            "ECC_DBE",
            "double-bit ECC error",
            Severity.UNHEALTHY,
            True,
            None,
            Effect.ECC_UNCORRECTED,
        ),
        FaultKind(
            63,
            "ECC_SBE",
            "single-bit ECC error corrected, page retired",
            Severity.IGNORE,
            False,
            None,
            Effect.ECC_CORRECTED,
        ),
        FaultKind(
            74, "LINK_ERROR", "device link error, link retrained", Severity.DEGRADE, False, 60.0
        ),
        FaultKind(
            79, "FALLEN_OFF_BUS", "device fell off the bus", Severity.FATAL, True, None, Effect.LOST
        ),
        FaultKind(
            94,
            "CONTAINED_ECC",
            "contained uncorrectable ECC error",
            Severity.UNHEALTHY,
            False,
            60.0,
            Effect.ECC_UNCORRECTED,
        ),
        FaultKind(
            95,
            "UNCONTAINED_ECC",
            "uncontained uncorrectable ECC error",
            Severity.FATAL,
            True,
            None,
            Effect.ECC_UNCORRECTED,
        ),
        FaultKind(
            140,
            "THERMAL_TRIP",
            "temperature reached the shutdown limit",
            Severity.UNHEALTHY,
            False,
            120.0,
            Effect.THERMAL,
        ),
    )
}

THERMAL_TRIP = 140


class UnknownFaultError(KeyError):
    def __str__(self) -> str:
        known = ", ".join(f"{c} ({k.name})" for c, k in sorted(CATALOG.items()))
        return f"unknown fault code {self.args[0]}; known codes: {known}"


def lookup(code: int) -> FaultKind:
    try:
        return CATALOG[code]
    except KeyError:
        raise UnknownFaultError(code) from None
