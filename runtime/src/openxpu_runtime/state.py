"""Persistent node state under /var/lib/openxpu: a snapshot plus an append-only journal.

Every acknowledged change is one line appended to the journal with a plain write() before
xpud answers: a write survives the death of the process (kill -9, OOM, a crash), so nothing
acknowledged is lost to those. fsync (which a power loss needs) and the full snapshot that
compacts the journal run on a writer thread, off the event loop. Journal records *set*
values (a context, an allocation, a device's counters), so replaying one on a snapshot that
already contains it changes nothing: a crash in the middle of a compaction is harmless.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from openxpu_runtime.device import Device, DeviceState

SCHEMA = 1
log = logging.getLogger(__name__)


class AllocationState(TypedDict):
    device: str
    size: int


class ContextState(TypedDict):
    id: str
    pid: int
    name: str
    created_at: float
    lease_seconds: float | None
    devices: list[str]
    memory_limits: dict[str, int]
    allocations: dict[str, AllocationState]
    scope: NotRequired[str | None]  # absent in state saved before scopes existed


class ScopeState(TypedDict):
    id: str
    created_at: float
    device_ids: list[str]
    devices: list[str]
    memory_limits: dict[str, int]
    labels: dict[str, str]


class NodeState(TypedDict):
    schema: int
    node: str
    profile: str
    driver_version: str
    devices: list[DeviceState]
    contexts: list[ContextState]
    scopes: NotRequired[list[ScopeState]]


class CorruptStateError(Exception):
    """The state file exists but cannot be trusted; xpud refuses to start on it."""


@dataclass
class ClientContext:
    """A process's context: what it may use and what it holds."""

    id: str
    pid: int
    name: str
    created_at: float
    lease_seconds: float
    last_seen: float  # model time (Clock.monotonic)
    devices: list[int]
    limits: dict[int, int]
    allocations: dict[str, tuple[int, int]] = field(default_factory=dict)
    scope: str | None = None  # the allocation it was opened through; None: the admin socket

    def used_on(self, index: int) -> int:
        return sum(size for dev, size in self.allocations.values() if dev == index)

    def to_state(self, devices: list[Device]) -> ContextState:
        return ContextState(
            id=self.id,
            pid=self.pid,
            name=self.name,
            created_at=self.created_at,
            lease_seconds=self.lease_seconds,
            devices=[devices[i].uuid for i in self.devices],
            memory_limits={devices[i].uuid: n for i, n in self.limits.items()},
            allocations={
                h: {"device": devices[i].uuid, "size": s} for h, (i, s) in self.allocations.items()
            },
            scope=self.scope,
        )


@dataclass
class Scope:
    """One allocation's view of the node: the devices a container was given (host indices,
    in the order it sees them) and, for shared replicas, the memory it may hold on each."""

    id: str
    created_at: float
    device_ids: list[str]  # as the device plugin allocated them: what it reconciles on
    devices: list[int]
    limits: dict[int, int]
    labels: dict[str, str]

    def to_state(self, devices: list[Device]) -> ScopeState:
        return ScopeState(
            id=self.id,
            created_at=self.created_at,
            device_ids=list(self.device_ids),
            devices=[devices[i].uuid for i in self.devices],
            memory_limits={devices[i].uuid: n for i, n in self.limits.items()},
            labels=dict(self.labels),
        )


# -- the state as a whole ---------------------------------------------------------------


def snapshot_state(
    node: str,
    profile: str,
    driver_version: str,
    devices: list[Device],
    contexts: Iterable[ClientContext],
    scopes: Iterable[Scope] = (),
) -> NodeState:
    return NodeState(
        schema=SCHEMA,
        node=node,
        profile=profile,
        driver_version=driver_version,
        devices=[d.to_state() for d in devices],
        contexts=[c.to_state(devices) for c in contexts],
        scopes=[s.to_state(devices) for s in scopes],
    )


def restore_scopes(saved: NodeState, devices: list[Device]) -> dict[str, Scope]:
    """The saved scopes; one that lost a device to a changed profile keeps the rest."""
    by_uuid = {d.uuid: d for d in devices}
    return {
        s["id"]: Scope(
            id=s["id"],
            created_at=s["created_at"],
            device_ids=s["device_ids"],
            devices=[by_uuid[u].index for u in s["devices"] if u in by_uuid],
            limits={by_uuid[u].index: n for u, n in s["memory_limits"].items() if u in by_uuid},
            labels=s["labels"],
        )
        for s in saved.get("scopes", [])
    }


def restore_state(
    saved: NodeState, devices: list[Device], now: float, default_lease: float
) -> dict[str, ClientContext]:
    """Put saved device state back into `devices`; the saved contexts, holding their memory."""
    by_uuid = {d.uuid: d for d in devices}
    for dev_state in saved["devices"]:
        dev = by_uuid.get(dev_state["uuid"])
        if dev is not None:  # devices gone from a changed profile are dropped
            dev.restore(dev_state)
    contexts: dict[str, ClientContext] = {}
    for c in saved["contexts"]:
        ctx = ClientContext(
            id=c["id"],
            pid=c["pid"],
            name=c["name"],
            created_at=c["created_at"],
            # Contexts saved before every context had a lease get the default one, so a
            # client that crashed long ago does not hold memory for good.
            lease_seconds=c["lease_seconds"] or default_lease,
            last_seen=now,  # a restart grants every lease a fresh term
            devices=[by_uuid[u].index for u in c["devices"] if u in by_uuid],
            limits={by_uuid[u].index: n for u, n in c["memory_limits"].items() if u in by_uuid},
            scope=c.get("scope"),
        )
        for handle, a in c["allocations"].items():
            if a["device"] in by_uuid:
                dev = by_uuid[a["device"]]
                ctx.allocations[handle] = (dev.index, a["size"])
                dev.memory_used += a["size"]
        contexts[ctx.id] = ctx
    return contexts


# -- validation -------------------------------------------------------------------------

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": int,
    "node": str,
    "profile": str,
    "driver_version": str,
    "devices": list,
    "contexts": list,
}
_DEVICE_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "uuid": str,
    "energy_joules": (int, float),
    "temperature_celsius": (int, float),
    "ecc_corrected": int,
    "ecc_uncorrected": int,
    "errors": dict,
    "last_error_code": int,
    "faults": list,
}
_CONTEXT_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "pid": int,
    "name": str,
    "devices": list,
    "memory_limits": dict,
    "allocations": dict,
}
_SCOPE_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "created_at": (int, float),
    "device_ids": list,
    "devices": list,
    "memory_limits": dict,
    "labels": dict,
}
_RECORD_REQUIRED: dict[str, dict[str, type | tuple[type, ...]]] = {
    "context": {"context": dict},
    "close": {"id": str},
    "alloc": {"context": str, "handle": str, "device": str, "size": int},
    "free": {"context": str, "handle": str},
    "device": {"device": dict},
    "energy": {"energy": dict},
    "scope": {"scope": dict},
    "unscope": {"id": str},
}


def _check(obj: Any, required: dict[str, type | tuple[type, ...]], where: str) -> None:
    if not isinstance(obj, dict):
        raise CorruptStateError(f"{where}: expected an object")
    for key, typ in required.items():
        if not isinstance(obj.get(key), typ):
            raise CorruptStateError(f"{where}: field {key!r} is missing or has the wrong type")


def validate(data: Any) -> NodeState:
    _check(data, _REQUIRED, "state")
    if data["schema"] != SCHEMA:
        raise CorruptStateError(f"state: schema {data['schema']} is not {SCHEMA}")
    for i, dev in enumerate(data["devices"]):
        _check(dev, _DEVICE_REQUIRED, f"devices[{i}]")
    for i, ctx in enumerate(data["contexts"]):
        _check(ctx, _CONTEXT_REQUIRED, f"contexts[{i}]")
    if not isinstance(data.setdefault("scopes", []), list):
        raise CorruptStateError("state: field 'scopes' has the wrong type")
    for i, scope in enumerate(data["scopes"]):
        _check(scope, _SCOPE_REQUIRED, f"scopes[{i}]")
    state: NodeState = data
    return state


# -- the journal ------------------------------------------------------------------------

Record = dict[str, Any]


def _apply(state: NodeState, record: Any, where: str) -> None:
    """Replay one journal record onto `state`; records set values, so replay is idempotent."""
    op = record.get("op") if isinstance(record, dict) else None
    if op not in _RECORD_REQUIRED:
        raise CorruptStateError(f"{where}: not a journal record")
    _check(record, _RECORD_REQUIRED[op], where)
    contexts = {c["id"]: c for c in state["contexts"]}
    scopes = {s["id"]: s for s in state.get("scopes", [])}
    if op == "context":
        _check(record["context"], _CONTEXT_REQUIRED, where)
        contexts[record["context"]["id"]] = record["context"]
    elif op == "close":
        contexts.pop(record["id"], None)
    elif op in ("alloc", "free") and record["context"] in contexts:
        allocations = contexts[record["context"]]["allocations"]
        if op == "alloc":
            allocations[record["handle"]] = {"device": record["device"], "size": record["size"]}
        else:
            allocations.pop(record["handle"], None)
    elif op == "device":
        _check(record["device"], _DEVICE_REQUIRED, where)
        _replace_device(state, record["device"])
    elif op == "scope":
        _check(record["scope"], _SCOPE_REQUIRED, where)
        scopes[record["scope"]["id"]] = record["scope"]
    elif op == "unscope":
        scopes.pop(record["id"], None)
    elif op == "energy":
        for dev in state["devices"]:
            if isinstance(joules := record["energy"].get(dev["uuid"]), int | float):
                dev["energy_joules"] = max(dev["energy_joules"], joules)
    state["contexts"] = list(contexts.values())
    state["scopes"] = list(scopes.values())


def _replace_device(state: NodeState, new: DeviceState) -> None:
    for i, dev in enumerate(state["devices"]):
        if dev["uuid"] == new["uuid"]:
            # Energy is a counter: a record never takes it below what was already exposed.
            energy = max(dev["energy_joules"], new["energy_joules"])
            state["devices"][i] = {**new, "energy_joules": energy}
            return
    state["devices"].append(new)


class StateStore:
    """`state.json` (the last compaction) plus `state.json.journal.<n>` (changes since)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records_since_compaction = 0
        self._fd: int | None = None
        self._generation = 0
        self._lock = threading.Condition()
        self._pending: tuple[NodeState, list[Path]] | None = None
        self._retired_fds: list[int] = []
        self._unsynced = False
        self._new_file = False
        self._busy = False
        self._writer: threading.Thread | None = None
        self._writer_error: BaseException | None = None

    @property
    def backup_path(self) -> Path:
        return self.path.with_name(self.path.name + ".bak")

    def _journal_path(self, generation: int) -> Path:
        return self.path.with_name(f"{self.path.name}.journal.{generation}")

    def journals(self) -> list[Path]:
        """Journal files in the order they were written."""
        found = self.path.parent.glob(f"{self.path.name}.journal.*")
        numbered = [(int(p.suffix[1:]), p) for p in found if p.suffix[1:].isdigit()]
        return [p for _, p in sorted(numbered)]

    # -- reading --------------------------------------------------------------------------

    def load(self) -> NodeState | None:
        """The saved state with its journal replayed, None on first start;
        CorruptStateError (with a kept copy) otherwise."""
        self.flush()
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        try:
            state = validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, CorruptStateError) as exc:
            raise self._corrupt(self.path, exc) from exc
        # The file just proved good: keep it as the backup before anything overwrites it.
        shutil.copy2(self.path, self.backup_path)
        for journal in self.journals():
            self._replay(journal, state)
        return state

    def _replay(self, journal: Path, state: NodeState) -> None:
        lines = journal.read_bytes().split(b"\n")
        # The last piece is empty, or a record torn by a power loss: never acknowledged.
        for number, line in enumerate(lines[:-1], 1):
            where = f"{journal.name} line {number}"
            try:
                _apply(state, json.loads(line), where)
            except (json.JSONDecodeError, UnicodeDecodeError, CorruptStateError) as exc:
                raise self._corrupt(journal, exc) from exc

    def _corrupt(self, path: Path, exc: Exception) -> CorruptStateError:
        kept = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
        shutil.copy2(path, kept)
        hint = (
            f"the last good state is {self.backup_path} (start with --restore-backup)"
            if self.backup_path.exists()
            else "no backup exists"
        )
        return CorruptStateError(
            f"state file {path} is corrupt ({exc}); a copy is kept at {kept}; {hint}; "
            "or start with --reset-state to begin with fresh devices"
        )

    # -- writing --------------------------------------------------------------------------

    def save(self, state: NodeState) -> None:
        """Write a full snapshot now and drop the journal it contains (startup, tests)."""
        self.flush()
        self._close_journal()
        self._write_snapshot(state, self.journals())

    def append(self, record: Record) -> None:
        """Journal one change. On return it survives a crash of this process; the writer
        thread fsyncs it moments later for a crash of the machine."""
        if self._fd is None:
            self._open_journal()
        assert self._fd is not None
        os.write(self._fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self.records_since_compaction += 1
        with self._lock:
            self._unsynced = True
            self._lock.notify()

    def compact(self, state: NodeState) -> None:
        """Hand a snapshot of everything journalled so far to the writer thread.

        `state` must include every record appended before this call: later records go to a
        new journal file, which the snapshot does not replace."""
        if self._writer_error is not None:  # keep serving: the journal still holds it all
            log.error("%s", self._take_writer_error())
        old = self.journals()
        self._close_journal()
        self.records_since_compaction = 0
        with self._lock:
            self._pending = (state, old)
            self._start_writer()
            self._lock.notify()

    def flush(self) -> None:
        """Wait until everything handed to the writer is on disk."""
        with self._lock:
            while self._writer is not None and (self._pending or self._unsynced or self._busy):
                self._lock.wait()
        self._raise_writer_error()

    def checkpoint(self) -> None:
        """Make the current state the backup: called when xpud stops cleanly."""
        self.flush()
        if self.path.exists():
            shutil.copy2(self.path, self.backup_path)

    def restore_backup(self) -> None:
        if not self.backup_path.exists():
            raise CorruptStateError(f"no backup at {self.backup_path}")
        validate(json.loads(self.backup_path.read_text()))
        # The journal holds changes made after a later snapshot than the backup: set aside.
        self._set_aside(self.journals(), "restored")
        shutil.copy2(self.backup_path, self.path)

    def reset(self) -> Path | None:
        """Move the current state aside (never delete it) so the next start is fresh."""
        if not self.path.exists():
            return None
        moved = self._set_aside([self.path, *self.journals()], "reset")
        return moved[0]

    @staticmethod
    def _set_aside(paths: list[Path], why: str) -> list[Path]:
        stamp = int(time.time())
        moved = []
        for path in paths:
            aside = path.with_name(f"{path.name}.{why}-{stamp}")
            os.replace(path, aside)
            moved.append(aside)
        return moved

    # -- the journal file and the writer thread --------------------------------------------

    def _open_journal(self) -> None:
        existing = self.journals()
        self._generation = int(existing[-1].suffix[1:]) + 1 if existing else self._generation + 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(
            self._journal_path(self._generation), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        with self._lock:
            self._new_file = True
            self._start_writer()

    def _close_journal(self) -> None:
        if self._fd is not None:
            with self._lock:  # the writer fsyncs it, then closes it
                self._retired_fds.append(self._fd)
                self._unsynced = True
                self._lock.notify()
            self._fd = None

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="xpud-state", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not (self._pending or self._unsynced):
                    self._lock.wait()
                pending, self._pending = self._pending, None
                retired, self._retired_fds = self._retired_fds, []
                current = self._fd
                new_file, self._new_file = self._new_file, False
                self._unsynced = False
                self._busy = True
            try:
                # Journal data first, so a snapshot never gets ahead of what it replaces.
                for fd in retired:
                    os.fsync(fd)
                    os.close(fd)
                # Only this thread closes journal fds, so `current` is still open here.
                if current is not None and current not in retired:
                    os.fsync(current)
                if new_file:  # a new journal file is a new directory entry
                    _fsync_dir(self.path.parent)
                if pending is not None:
                    self._write_snapshot(*pending)
            except BaseException as exc:  # reported on the next compact/flush
                self._writer_error = exc
            finally:
                with self._lock:
                    self._busy = False
                    self._lock.notify_all()

    def _write_snapshot(self, state: NodeState, replaced: list[Path]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        for journal in replaced:
            journal.unlink(missing_ok=True)

    def _take_writer_error(self) -> OSError:
        exc, self._writer_error = self._writer_error, None
        return OSError(f"writing state under {self.path.parent} failed: {exc}")

    def _raise_writer_error(self) -> None:
        if self._writer_error is not None:
            raise self._take_writer_error()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
