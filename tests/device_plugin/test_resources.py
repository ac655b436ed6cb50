"""The resource manager and preferred allocation, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from openxpu_device_plugin import cdi
from openxpu_device_plugin.config import AllocationPolicy, ConfigSource
from openxpu_device_plugin.preferred import Candidate, choose_devices, choose_replicas
from openxpu_device_plugin.resources import AllocationError, ResourceManager
from openxpu_runtime import api

pytestmark = pytest.mark.unit
GIB = 1 << 30


def inventory(tmp_path: Path, count: int = 8, groups: int = 2) -> list[api.DeviceInfo]:
    per = count // groups
    return [
        api.DeviceInfo.model_validate(
            {
                **_DEVICE,
                "index": i,
                "uuid": f"XPU-{i:04d}",
                "link_group": i // per,
                "numa_node": i // per,
                "device_path": str(tmp_path / f"xpu{i}"),
            }
        )
        for i in range(count)
    ]


# One device record as xpud's inventory has it; inventory() varies index, uuid and placement.
_DEVICE = dict(
    index=0,
    uuid="",
    product="OpenXPU X1",
    family="x1",
    memory_total_bytes=16 * GIB,
    compute_units=64,
    max_clock_mhz=1800,
    tdp_watts=300,
    peak_ops_per_second=1e12,
    link_group=0,
    numa_node=0,
    device_path="",
    health="Healthy",
)


def manager(tmp_path: Path, **env: str) -> ResourceManager:
    rm = ResourceManager(ConfigSource(env=env).load())
    rm.set_inventory(inventory(tmp_path))
    return rm


def test_health_words_map_to_kubelet_health(tmp_path: Path) -> None:
    rm = manager(tmp_path)
    gen = rm.generation
    assert not rm.set_health("XPU-0001", "Degraded")  # still schedulable: no update
    assert rm.generation == gen
    assert rm.set_health("XPU-0002", "Lost", "fell off the bus")
    assert rm.set_health("XPU-0003", "Unhealthy")
    health = {d.id: d.healthy for d in rm.advertised()}
    assert [k for k, v in health.items() if not v] == ["XPU-0002", "XPU-0003"]
    with pytest.raises(AllocationError, match=r"is Unhealthy \(Lost: fell off the bus\)"):
        rm.plan(["XPU-0002"])
    rm.set_unreachable("connection refused")
    assert not any(d.healthy for d in rm.advertised())
    rm.set_inventory(inventory(tmp_path))
    assert all(d.healthy for d in rm.advertised())


def test_allocate_validation(tmp_path: Path) -> None:
    rm = manager(tmp_path)
    with pytest.raises(AllocationError, match="no device IDs"):
        rm.plan([])
    with pytest.raises(AllocationError, match="duplicate"):
        rm.plan(["XPU-0001", "XPU-0001"])
    with pytest.raises(AllocationError, match=r"unknown device ID 'XPU-0001::0'.*advertises 8"):
        rm.plan(["XPU-0001::0"])


def test_replicas_of_one_device_add_up_their_memory(tmp_path: Path) -> None:
    rm = manager(tmp_path, REPLICAS="4")
    plan = rm.plan(["XPU-0001::0", "XPU-0001::3", "XPU-0002::1"])
    assert [x.uuid for x in plan.xpus] == ["XPU-0001", "XPU-0002"]
    assert plan.memory_limits == [8 * GIB, 4 * GIB]
    asked = {d.id: d.memory_limit_bytes for d in plan.scope_request.devices}
    assert asked == {"XPU-0001::0": 4 * GIB, "XPU-0001::3": 4 * GIB, "XPU-0002::1": 4 * GIB}
    assert plan.scope_request.labels == {"resource": "openxpu.io/xpu"}


def test_replicas_never_ask_xpud_for_more_than_the_device(tmp_path: Path) -> None:
    """xpud refuses a scope whose replica limits add up beyond the device's memory."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "version: v1\nsharing:\n  timeSlicing:\n    replicas: 4\n    memoryPerReplica: 10Gi\n"
    )
    rm = ResourceManager(ConfigSource(file=config, env={}).load())
    rm.set_inventory(inventory(tmp_path))
    plan = rm.plan(["XPU-0001::0", "XPU-0001::1", "XPU-0001::2"])
    assert plan.memory_limits == [16 * GIB]
    asked = [d.memory_limit_bytes or 0 for d in plan.scope_request.devices]
    assert sum(asked) == 16 * GIB and max(asked) - min(asked) <= 1


def c8() -> list[Candidate]:
    return [Candidate(f"d{i}", i, i // 4, i // 4) for i in range(8)]


def test_devices_fill_one_link_group_and_best_fit() -> None:
    assert choose_devices(c8(), [], 4) == ["d0", "d1", "d2", "d3"]
    assert choose_devices(c8(), ["d5"], 2) == ["d5", "d4"]
    avail = [c for c in c8() if c.id not in ("d0", "d4", "d5")]  # group 0: 3 free, group 1: 2
    assert choose_devices(avail, [], 2) == ["d6", "d7"]
    assert choose_devices(avail, [], 3) == ["d1", "d2", "d3"]
    got = choose_devices(avail, [], 4)
    assert got[:3] == ["d1", "d2", "d3"] and got[3] in ("d6", "d7")
    # must-include not offered is ignored; never more than asked
    assert choose_devices(c8(), ["zz", "d1", "d2"], 1) == ["d1"]


def replicas(per: int = 4, taken: tuple[str, ...] = ()) -> list[Candidate]:
    out = []
    for i in range(8):
        for n in range(per):
            if f"d{i}::{n}" not in taken:
                out.append(Candidate(f"d{i}::{n}", i, i // 4, i // 4, n))
    return out


def test_replicas_distributed_spread_over_least_used_devices() -> None:
    taken = ("d0::0", "d1::0", "d1::1")
    got = choose_replicas(replicas(taken=taken), [], 3, 4, AllocationPolicy.DISTRIBUTED)
    assert [g.split("::")[0] for g in got] == ["d2", "d3", "d0"]


def test_replicas_packed_fill_the_busiest_device_first() -> None:
    taken = ("d0::0", "d5::0", "d5::1")
    got = choose_replicas(replicas(taken=taken), [], 3, 4, AllocationPolicy.PACKED)
    assert got == ["d5::2", "d5::3", "d4::0"]  # then stays in d5's link group
    got = choose_replicas(replicas(), ["d3::1"], 2, 4, AllocationPolicy.PACKED)
    assert got == ["d3::1", "d3::0"]


def test_cdi_spec_is_written_once_per_content(tmp_path: Path) -> None:
    rm = manager(tmp_path)
    spec = cdi.build_spec(rm.xpus, "/run/openxpu/xpud.sock")
    assert spec["kind"] == "openxpu.io/xpu"
    names = [d["name"] for d in spec["devices"]]
    assert names[:2] == ["XPU-0000", "0"] and names[-1] == "all"
    # The inventory's device paths are plain files here (absent): trusted as device nodes.
    assert spec["devices"][0]["containerEdits"]["deviceNodes"][0]["path"] == "/dev/xpu0"
    assert cdi.write_spec(tmp_path / "cdi", spec)
    assert not cdi.write_spec(tmp_path / "cdi", spec)
    assert [p.name for p in (tmp_path / "cdi").iterdir()] == ["openxpu.io-xpu.yaml"]
    (tmp_path / "xpu0").write_text("")  # an emulated node that is a plain file: bind-mounted
    rm.set_inventory(inventory(tmp_path))
    edits = cdi.build_spec(rm.xpus, "/run/openxpu/xpud.sock")["devices"][0]["containerEdits"]
    assert edits["mounts"][0]["containerPath"] == "/dev/xpu0"
    assert cdi.write_spec(tmp_path / "cdi", cdi.build_spec(rm.xpus, "/x/xpud.sock"))
