from __future__ import annotations

import pytest

from openxpu_device_plugin import labels
from openxpu_device_plugin.config import ConfigSource
from openxpu_runtime import api

pytestmark = pytest.mark.unit
MIB = 1 << 20


def inventory(count: int) -> api.Inventory:
    device = {
        "product": "OpenXPU X1 (emulated)",
        "family": "x1",
        "memory_total_bytes": 16384 * MIB,
        "compute_units": 64,
        "max_clock_mhz": 1800,
        "peak_ops_per_second": 1e12,
        "tdp_watts": 300,
        "link_group": 0,
        "numa_node": 0,
        "health": "Healthy",
    }
    return api.Inventory.model_validate(
        {
            "node": "n",
            "profile": "x1-8",
            "driver_version": "1.2.3",
            "devices": [
                {**device, "index": i, "uuid": f"XPU-{i}", "device_path": f"/dev/xpu{i}"}
                for i in range(count)
            ],
        }
    )


def test_labels_of_a_node_with_xpus() -> None:
    got = labels.compute(inventory(8), ConfigSource(env={}).load())
    assert got == {
        "openxpu.io/xpu.product": "OpenXPU-X1-emulated",
        "openxpu.io/xpu.family": "x1",
        "openxpu.io/xpu.count": "8",
        "openxpu.io/xpu.memory": "16384",
        "openxpu.io/xpu.replicas": "1",
        "openxpu.io/xpu.sharing-strategy": "none",
        "openxpu.io/driver.version": "1.2.3",
    }


def test_time_slicing_labels() -> None:
    cfg = ConfigSource(env={"REPLICAS": "4"}).load()
    got = labels.compute(inventory(2), cfg)
    assert got["openxpu.io/xpu.replicas"] == "4"
    assert got["openxpu.io/xpu.sharing-strategy"] == "time-slicing"


def test_patch_sets_changes_and_removes_only_owned_labels() -> None:
    current = {
        "openxpu.io/xpu.count": "8",
        "openxpu.io/xpu.product": "old",
        "openxpu.io/xpu.present": "true",  # the operator's
        "kubernetes.io/hostname": "n",
    }
    wanted = labels.compute(inventory(8), ConfigSource(env={}).load())
    patch = labels.patch_for(current, wanted)
    assert "openxpu.io/xpu.count" not in patch  # unchanged
    assert patch["openxpu.io/xpu.product"] == "OpenXPU-X1-emulated"
    assert labels.patch_for({**current, **wanted}, wanted) == {}
    gone = labels.patch_for(
        {**current, **wanted}, labels.compute(inventory(0), ConfigSource(env={}).load())
    )
    assert set(gone) == set(labels.OWNED) and all(v is None for v in gone.values())


def test_label_values_are_valid() -> None:
    assert labels.label_value("  A/B c_d.e  ") == "A-B-c_d.e"
    assert len(labels.label_value("x" * 100)) == 63
