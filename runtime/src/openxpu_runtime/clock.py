"""Time sources. The model never reads the system clock directly, so tests can drive it."""

from __future__ import annotations

import time
from typing import Protocol

# A fixed epoch for the manual clock: traces recorded under it are identical run to run.
MANUAL_EPOCH = 1_700_000_000.0


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()


class ManualClock:
    """A clock that moves only when told to; `xpud --clock manual` serves it over the API."""

    def __init__(self, start: float = MANUAL_EPOCH) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        return self._now
