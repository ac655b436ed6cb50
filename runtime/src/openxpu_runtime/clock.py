"""Time sources. The model never reads the system clock directly, so tests can drive it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

# A fixed epoch for the manual clock: traces recorded under it are identical run to run.
MANUAL_EPOCH = 1_700_000_000.0
# Model time moves at most this far between two readings. xpud reads it every tick (1 s),
# so a longer gap means xpud itself did not run (stopped, a paused VM): the devices, like
# their emulator, were paused too, instead of catching up for seconds and expiring every
# lease at once.
MAX_GAP_SECONDS = 10.0


class Clock(Protocol):
    def now(self) -> float:
        """Wall time, seconds since the Unix epoch: for timestamps people read."""
        ...

    def monotonic(self) -> float:
        """Model time for physics, fault recovery and leases: never steps back or jumps;
        seconds on a timeline that starts at the wall time the clock was made."""
        ...


class SystemClock:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        elapsed: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._elapsed = elapsed
        self._last_elapsed = elapsed()
        self._model = wall()

    def now(self) -> float:
        return self._wall()

    def monotonic(self) -> float:
        elapsed = self._elapsed()
        self._model += min(elapsed - self._last_elapsed, MAX_GAP_SECONDS)
        self._last_elapsed = elapsed
        return self._model


class ManualClock:
    """A clock that moves only when told to; `xpud --clock manual` serves it over the API."""

    def __init__(self, start: float = MANUAL_EPOCH) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        return self._now
