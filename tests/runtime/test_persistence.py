"""Crash guarantees of xpud's state (docs/runtime.md, "Crash guarantees"): what an
acknowledged change keeps after kill -9, and the journal that keeps it."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.state import CorruptStateError, StateStore
from openxpu_runtime.testing import XpudProcess

GIB = 1 << 30


def make_engine(store: StateStore, clock: ManualClock | None = None) -> Engine:
    return Engine(
        node="n1", profile=BUILTIN["x1-2"], clock=clock or ManualClock(), seed=7, store=store
    )


def open_ctx(engine: Engine) -> str:
    return engine.open_context(api.ContextRequest(pid=1, name="t", devices=["0", "1"])).id


def store_with_a_context(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path / "state.json")
    open_ctx(make_engine(store))
    return store


def counters(t: api.Telemetry) -> list[tuple[float, int, int, dict[str, int]]]:
    return [
        (d.energy_joules, d.ecc_corrected_total, d.ecc_uncorrected_total, d.errors_total)
        for d in t.devices
    ]


@pytest.mark.integration
def test_kill_9_right_after_acknowledged_changes_loses_none_of_them(short_root: Path) -> None:
    proc = XpudProcess(short_root, "--profile", "x1-2", "--clock", "manual").start()
    try:
        for round_ in range(3):
            with proc.client() as c:
                ctx = c.open_context(api.ContextRequest(pid=round_, name="w", devices=["0", "1"]))
                kept = [c.allocate(ctx.id, str(i % 2), GIB // 8).handle for i in range(6)]
                c.free(ctx.id, kept.pop(0))
                c.inject_fault(api.FaultRequest(device="0", code=63))  # ECC corrected +1
                c.inject_fault(api.FaultRequest(device="1", code=94))  # ECC uncorrected +1
                c.clear_faults("1")
                c.advance_clock(120)  # energy moves
                shown = c.telemetry()  # what Prometheus would have scraped
                held = {p.id: p for p in c.processes()}
            assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
            proc.start()
            with proc.client() as c:
                after = c.telemetry()
                assert {p.id: p for p in c.processes()} == held
                assert [d.memory_used_bytes for d in after.devices] == [
                    d.memory_used_bytes for d in shown.devices
                ]
            for (e0, sbe0, dbe0, err0), (e1, sbe1, dbe1, err1) in zip(
                counters(shown), counters(after), strict=True
            ):
                assert e1 >= e0, "energy went backwards across kill -9"
                assert (sbe1, dbe1, err1) == (sbe0, dbe0, err0)
            assert after.devices[1].health == "Healthy", "the cleared fault stays cleared"
    finally:
        proc.stop()


@pytest.mark.integration
def test_kill_9_keeps_energy_exposed_under_the_system_clock(short_root: Path) -> None:
    proc = XpudProcess(short_root, "--profile", "x1-2").start()
    try:
        with proc.client() as c:
            ctx = c.open_context(api.ContextRequest(pid=1, name="w", devices=["0"]))
            c.launch(ctx.id, "0", c.inventory().devices[0].peak_ops_per_second * 60)
            time.sleep(2)  # 150 W busy: far more energy than a restart adds at idle
            for _ in range(5):
                shown = c.telemetry().devices[0].energy_joules
        proc.stop(signal.SIGKILL)
        proc.start()
        with proc.client() as c:
            assert c.telemetry().devices[0].energy_joules >= shown
    finally:
        proc.stop()


@pytest.mark.unit
def test_a_change_appends_to_the_journal_instead_of_rewriting_the_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    engine = make_engine(store)
    snapshot = store.path.stat()
    c = open_ctx(engine)
    for _ in range(50):
        engine.allocate(c, api.AllocationRequest(device="0", size=1))
    store.flush()
    after = store.path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (snapshot.st_ino, snapshot.st_mtime_ns)
    (journal,) = store.journals()
    assert len(journal.read_text().splitlines()) == 51  # one context, fifty allocations


@pytest.mark.unit
def test_compaction_folds_the_journal_into_the_snapshot(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json")
    engine = make_engine(store)
    c = open_ctx(engine)
    engine.allocate(c, api.AllocationRequest(device="0", size=GIB))
    engine.persist()
    engine.allocate(c, api.AllocationRequest(device="1", size=GIB))  # after the snapshot
    store.flush()
    assert len(store.journals()) == 1, "the compacted journal is gone, the new one stays"
    saved = json.loads(store.path.read_text())
    assert len(saved["contexts"][0]["allocations"]) == 1
    again = make_engine(StateStore(store.path))
    assert [d.memory_used_bytes for d in again.telemetry().devices] == [GIB, GIB]


@pytest.mark.unit
def test_replaying_a_journal_the_snapshot_already_holds_changes_nothing(tmp_path: Path) -> None:
    """A crash between writing the snapshot and deleting the journal it replaces."""
    store = StateStore(tmp_path / "state.json")
    engine = make_engine(store)
    c = open_ctx(engine)
    handles = [engine.allocate(c, api.AllocationRequest(device="0", size=GIB)).handle]
    handles.append(engine.allocate(c, api.AllocationRequest(device="1", size=GIB)).handle)
    engine.free(c, handles[0])
    engine.inject_fault(api.FaultRequest(device="0", code=63))
    store.flush()
    (journal,) = store.journals()
    copy = journal.read_bytes()
    engine.persist()
    store.flush()
    journal.write_bytes(copy)  # as if the crash came before the unlink
    state = StateStore(store.path).load()
    assert state is not None
    assert state["contexts"][0]["allocations"] == {
        handles[1]: {"device": state["devices"][1]["uuid"], "size": GIB}
    }
    assert state["devices"][0]["ecc_corrected"] == 1


@pytest.mark.unit
def test_a_torn_last_record_is_ignored_a_bad_one_inside_is_refused(tmp_path: Path) -> None:
    store = store_with_a_context(tmp_path)
    store.flush()
    (journal,) = store.journals()
    good = journal.read_bytes()
    journal.write_bytes(good + b'{"op":"close","i')  # power lost mid-write: never acknowledged
    assert len(StateStore(store.path).load()["contexts"]) == 1  # type: ignore[index]
    journal.write_bytes(b'{"op":"nonsense"}\n' + good)
    with pytest.raises(CorruptStateError, match=r"journal\.1 is corrupt .*line 1.*--reset-state"):
        StateStore(store.path).load()
    assert list(tmp_path.glob("state.json.journal.1.corrupt-*"))


@pytest.mark.unit
def test_reset_and_restore_backup_set_the_journal_aside(tmp_path: Path) -> None:
    store = store_with_a_context(tmp_path)
    store.checkpoint()
    assert store.journals()
    store.restore_backup()
    assert not store.journals() and list(tmp_path.glob("state.json.journal.*.restored-*"))
    assert StateStore(store.path).load()["contexts"] == []  # type: ignore[index]
    open_ctx(make_engine(store))
    assert store.reset() is not None
    assert not store.path.exists() and not store.journals()


@pytest.mark.unit
def test_a_long_journal_is_compacted_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("openxpu_runtime.engine.COMPACT_AFTER_RECORDS", 5)
    store = StateStore(tmp_path / "state.json")
    engine = make_engine(store)
    c = open_ctx(engine)
    for _ in range(12):
        engine.allocate(c, api.AllocationRequest(device="0", size=1))
    store.flush()
    saved = json.loads(store.path.read_text())
    assert len(saved["contexts"][0]["allocations"]) == 9  # compacted twice, 3 since
    assert len(store.journals()) == 1
    again = make_engine(StateStore(store.path))
    assert again.telemetry().devices[0].memory_used_bytes == 12
