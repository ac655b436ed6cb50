"""One xpud per state directory: the lock comes before anything touches the state."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from openxpu_runtime.client import wait_until_answering
from openxpu_runtime.testing import XpudProcess, run_xpud

pytestmark = pytest.mark.integration


def test_of_two_simultaneous_starts_one_serves_and_the_other_says_why(short_root: Path) -> None:
    racers = [XpudProcess(short_root) for _ in range(2)]
    for i, racer in enumerate(racers):
        racer.log = short_root / f"xpud-{i}.log"
    # Both before either answers: the race the old check-then-bind guard lost (both ran).
    procs = [racer.spawn() for racer in racers]
    try:
        deadline = time.monotonic() + 15
        while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        exited = [i for i, p in enumerate(procs) if p.returncode is not None]
        assert len(exited) == 1, "both xpuds are running on one state directory"
        loser, winner = exited[0], 1 - exited[0]
        assert procs[loser].returncode == 2
        said = racers[loser].log_tail().splitlines()
        assert len(said) == 1 and said[0].startswith("xpud: another xpud (pid ")
        assert "var/lib/openxpu/xpud.lock" in said[0]
        wait_until_answering(racers[winner].socket, procs[winner].poll, 15)
    finally:
        for racer in racers:
            racer.stop()


def test_reset_against_a_running_xpud_is_refused_and_moves_nothing(xpud: XpudProcess) -> None:
    state_dir = xpud.paths.state_dir
    before = sorted(p.name for p in state_dir.iterdir())
    for flag in ("--reset-state", "--restore-backup"):
        result = run_xpud("--root", str(xpud.paths.root), "--device-nodes", "file", flag)
        assert result.returncode == 2
        assert result.stderr.startswith("xpud: another xpud (pid ") and "holds" in result.stderr
    assert sorted(p.name for p in state_dir.iterdir()) == before
    with xpud.client() as c:
        assert c.version().api == "v1"


def test_the_lock_dies_with_a_killed_xpud(short_root: Path) -> None:
    proc = XpudProcess(short_root).start()
    assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
    proc.start()  # raises if the dead xpud's lock or stale socket were in the way
    proc.stop()
