"""Lab processes: pid files that survive pid reuse, stop by pid, failures that name the
component and show its log."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpu_lab import health, procs
from openxpu_lab.shell import LabError

pytestmark = pytest.mark.integration


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    pids, logs = tmp_path / "pids", tmp_path / "logs"
    pids.mkdir()
    logs.mkdir()
    return pids, logs


def test_start_stop_by_pid(tmp_path: Path) -> None:
    pids, logs = _dirs(tmp_path)
    pid = procs.start("sleeper", ["sleep", "60"], pids, logs)
    assert procs.alive("sleeper", pids) == pid
    assert procs.stop("sleeper", pids, grace=5)
    assert procs.alive("sleeper", pids) is None
    assert not (pids / "sleeper.json").exists()
    assert not procs.stop("sleeper", pids)  # idempotent


def test_recycled_pid_is_not_ours(tmp_path: Path) -> None:
    pids, logs = _dirs(tmp_path)
    procs.start("sleeper", ["sleep", "60"], pids, logs)
    rec = procs.read("sleeper", pids)
    assert rec is not None
    (pids / "sleeper.json").write_text(
        (pids / "sleeper.json").read_text().replace(rec["start"], "1")
    )
    assert procs.alive("sleeper", pids) is None  # same pid, other start time
    (pids / "sleeper.json").write_text(
        (pids / "sleeper.json").read_text().replace('"start": "1"', f'"start": "{rec["start"]}"')
    )
    assert procs.stop("sleeper", pids, grace=5)


def test_dead_component_fails_with_its_log_tail(tmp_path: Path) -> None:
    pids, logs = _dirs(tmp_path)
    procs.start("boom", ["sh", "-c", "echo 'fatal: port in use'; exit 3"], pids, logs)
    with pytest.raises(LabError) as err:
        health.wait_for(
            "readiness", lambda: False, timeout=20, component="boom", pid_dir=pids, log_dir=logs
        )
    assert "boom exited" in str(err.value)
    assert "fatal: port in use" in str(err.value)


def test_slow_component_times_out_with_its_log_tail(tmp_path: Path) -> None:
    pids, logs = _dirs(tmp_path)
    procs.start("slow", ["sh", "-c", "echo still-starting; sleep 60"], pids, logs)
    try:
        with pytest.raises(LabError, match="not reached within 1s"):
            health.wait_for(
                "readiness", lambda: False, timeout=1, component="slow", pid_dir=pids, log_dir=logs
            )
    finally:
        procs.stop("slow", pids, grace=2)
