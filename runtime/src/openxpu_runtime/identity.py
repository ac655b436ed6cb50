"""The identities the NVML library (runtime/nvml/src/state.rs) gives a device — PCI location,
bus id, serial — so xpu-smi and the exporter's DCGM labels name a device as NVML does.
Standard library only: xpu-smi's plain queries import this."""

from __future__ import annotations

# The emulated PCI topology: 32 devices per bus, from bus 1 of domain 0.
DEVICES_PER_BUS = 32
SERIAL_DIGITS = 13


def pci_location(index: int) -> tuple[int, int, int]:
    """(domain, bus, device) of host device `index`, as the NVML library places it."""
    return 0, 1 + index // DEVICES_PER_BUS, index % DEVICES_PER_BUS


def bus_id(index: int) -> str:
    domain, bus, device = pci_location(index)
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def serial(uuid: str) -> str:
    """A 13-digit board serial derived from the UUID, so it is as stable (NVML's formula)."""
    digits = "".join(c for c in uuid if c in "0123456789abcdefABCDEF")[-12:]
    return f"{int(digits or '0', 16) % 10**SERIAL_DIGITS:0{SERIAL_DIGITS}d}"
