"""Feature discovery's node labels (the design brief's names), computed from xpud's
inventory and the plugin configuration. Pure: patching is discovery.py's job.
"""

from __future__ import annotations

import re

from openxpu_device_plugin.config import Config
from openxpu_runtime import api

PREFIX = "openxpu.io/"
PRODUCT = "openxpu.io/xpu.product"
COUNT = "openxpu.io/xpu.count"
MEMORY = "openxpu.io/xpu.memory"
FAMILY = "openxpu.io/xpu.family"
REPLICAS = "openxpu.io/xpu.replicas"
SHARING = "openxpu.io/xpu.sharing-strategy"
DRIVER_VERSION = "openxpu.io/driver.version"
# The labels this component owns: it sets them, updates them, and removes them — and no
# others (xpu.present, deploy.*, driver-upgrade-state belong to the operator).
OWNED = (PRODUCT, COUNT, MEMORY, FAMILY, REPLICAS, SHARING, DRIVER_VERSION)

_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
MIB = 1024 * 1024


def label_value(text: str) -> str:
    """A label-safe value: spaces and other characters become '-', trimmed to 63, as GFD
    does with `NVIDIA-A100-SXM4-40GB`."""
    value = _INVALID.sub("-", text.strip())[:63]
    return value.strip("-_.")


def compute(inventory: api.Inventory, config: Config) -> dict[str, str]:
    """The labels this node should carry; empty when it has no XPUs."""
    devices = inventory.devices
    if not devices:
        return {}
    first = min(devices, key=lambda d: d.index)
    shared = config.shared
    labels = {
        PRODUCT: label_value(first.product),
        FAMILY: label_value(first.family),
        COUNT: str(len(devices)),
        # Per device, in MiB, as nvidia.com/gpu.memory.
        MEMORY: str(first.memory_total_bytes // MIB),
        REPLICAS: str(config.replicas),
        SHARING: "time-slicing" if shared else "none",
        DRIVER_VERSION: label_value(inventory.driver_version),
    }
    if shared and config.sharing.time_slicing.rename_by_default:
        # GFD marks renamed shared products the same way (`-SHARED`).
        labels[PRODUCT] = label_value(f"{first.product}-SHARED")
    return {k: v for k, v in labels.items() if v}


def patch_for(current: dict[str, str], wanted: dict[str, str]) -> dict[str, str | None]:
    """The merge patch from `current` to `wanted` over the owned labels; empty if none."""
    patch: dict[str, str | None] = {}
    for key in OWNED:
        if key in wanted and current.get(key) != wanted[key]:
            patch[key] = wanted[key]
        elif key not in wanted and key in current:
            patch[key] = None
    return patch
