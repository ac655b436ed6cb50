"""Persistent node state under /var/lib/openxpu: atomic writes, a backup, no silent resets."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, TypedDict

from openxpu_runtime.device import DeviceState

SCHEMA = 1


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


class NodeState(TypedDict):
    schema: int
    node: str
    profile: str
    driver_version: str
    devices: list[DeviceState]
    contexts: list[ContextState]


class CorruptStateError(Exception):
    """The state file exists but cannot be trusted; xpud refuses to start on it."""


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
    state: NodeState = data
    return state


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def backup_path(self) -> Path:
        return self.path.with_name(self.path.name + ".bak")

    def load(self) -> NodeState | None:
        """The saved state, None on first start; CorruptStateError (with a kept copy) otherwise."""
        if not self.path.exists():
            return None
        raw = self.path.read_bytes()
        try:
            state = validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, CorruptStateError) as exc:
            kept = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            shutil.copy2(self.path, kept)
            hint = (
                f"the last good state is {self.backup_path} (start with --restore-backup)"
                if self.backup_path.exists()
                else "no backup exists"
            )
            raise CorruptStateError(
                f"state file {self.path} is corrupt ({exc}); a copy is kept at {kept}; {hint}; "
                "or start with --reset-state to begin with fresh devices"
            ) from exc
        # The file just proved good: keep it as the backup before anything overwrites it.
        shutil.copy2(self.path, self.backup_path)
        return state

    def save(self, state: NodeState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(state, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def checkpoint(self) -> None:
        """Make the current state the backup: called when xpud stops cleanly."""
        if self.path.exists():
            shutil.copy2(self.path, self.backup_path)

    def restore_backup(self) -> None:
        if not self.backup_path.exists():
            raise CorruptStateError(f"no backup at {self.backup_path}")
        validate(json.loads(self.backup_path.read_text()))
        shutil.copy2(self.backup_path, self.path)

    def reset(self) -> Path | None:
        """Move the current state aside (never delete it) so the next start is fresh."""
        if not self.path.exists():
            return None
        aside = self.path.with_name(f"{self.path.name}.reset-{int(time.time())}")
        os.replace(self.path, aside)
        return aside
