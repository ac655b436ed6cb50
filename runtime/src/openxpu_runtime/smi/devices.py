"""Which devices a command is about: nvidia-smi's `-i` (indices, UUIDs, PCI bus ids, serials)
and the identities the NVML library reports for them (runtime/nvml/src/state.rs)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from openxpu_runtime.errors import XpuError
from openxpu_runtime.identity import pci_location, serial

Reading = dict[str, Any]


def _parse_bus_id(text: str) -> tuple[int, int, int] | None:
    """Bus ids compare as numbers, so `0000:01:03.0` and `00000000:01:03.0` both match."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        return None
    try:
        domain = int(parts[0], 16) if len(parts) == 3 else 0
        return domain, int(parts[-2], 16), int(parts[-1].split(".")[0], 16)
    except ValueError:
        return None


def split_ids(given: Iterable[str] | None) -> list[str]:
    """Every `-i` value, each a comma-separated list, in order and without repeats: a
    selection is never cut to its last `-i`."""
    ids: list[str] = []
    for value in given or ():
        for part in value.split(","):
            part = part.strip()
            if not part:
                raise XpuError(f"empty device id in -i {value!r}")
            if part not in ids:
                ids.append(part)
    return ids


def matches(device: Reading, ref: str) -> bool:
    index: int = device["index"]
    uuid: str = device["uuid"]
    if ref == str(index) or ref.lower() == uuid.lower() or ref == serial(uuid):
        return True
    return ":" in ref and _parse_bus_id(ref) == pci_location(index)


def select(devices: list[Reading], ids: list[str]) -> list[Reading]:
    """The devices `ids` name, in enumeration order as nvidia-smi lists them; all devices
    when none is named. A name that matches nothing is an error, never skipped."""
    if not ids:
        return devices
    missing = [ref for ref in ids if not any(matches(d, ref) for d in devices)]
    if missing:
        raise XpuError(f"no such device: {', '.join(missing)}")
    return [d for d in devices if any(matches(d, ref) for ref in ids)]
