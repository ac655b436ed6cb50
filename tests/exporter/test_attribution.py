"""Pod attribution through a PodResources server that speaks the kubelet's gRPC contract."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from openxpu_exporter.attribution import PodRef, physical_device
from openxpu_runtime.testing import XpudProcess

from .support import FakeKubelet, one, parse, pod, select

pytestmark = pytest.mark.integration

POD_LABELS = ("pod", "namespace", "container")


async def scrape(exporter: Any) -> list[Any]:
    body, _ = await exporter.render()
    return parse(body.decode())


def test_replica_ids_name_the_physical_device() -> None:
    assert physical_device("XPU-abc::3") == "XPU-abc"
    assert physical_device("XPU-abc") == "XPU-abc"


async def test_devices_carry_the_pods_holding_them(
    manual_xpud: XpudProcess, kubelet: FakeKubelet, make_exporter: Any
) -> None:
    with manual_xpud.client() as c:
        uuids = [d.uuid for d in c.telemetry().devices]
    kubelet.pods = [
        pod("train-0", "ml", {"trainer": [uuids[0], uuids[1]], "sidecar": []}),
        # Two pods sharing device 2 through replicas; one holds two replicas of it.
        pod("infer-a", "serving", {"server": [f"{uuids[2]}::0", f"{uuids[2]}::3"]},
            resource="openxpu.io/xpu.shared"),
        pod("infer-b", "serving", {"server": [f"{uuids[2]}::1"]}),
        # Another extended resource's devices must be ignored.
        pod("gpu-pod", "other", {"main": ["GPU-1234"]}, resource="nvidia.com/gpu"),
    ]  # fmt: skip
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, kubelet_socket=kubelet.socket_path, refresh_interval=0
    )
    assert exporter.state.attribution[uuids[2]] == (
        PodRef("infer-a", "serving", "server"),
        PodRef("infer-b", "serving", "server"),
    )
    series = await scrape(exporter)
    held = one(series, "openxpu_memory_used_bytes", uuid=uuids[0])
    assert {k: held.labels[k] for k in POD_LABELS} == {
        "pod": "train-0", "namespace": "ml", "container": "trainer"
    }  # fmt: skip
    assert one(series, "openxpu_power_watts", uuid=uuids[1]).labels["pod"] == "train-0"
    shared = select(series, "openxpu_utilization_ratio", uuid=uuids[2])
    assert sorted(s.labels["pod"] for s in shared) == ["infer-a", "infer-b"]
    # Nobody holds devices 3..7: no pod labels at all, not empty ones.
    for uuid in uuids[3:]:
        s = one(series, "openxpu_utilization_ratio", uuid=uuid)
        assert not set(POD_LABELS) & set(s.labels), s.labels
    assert one(series, "openxpu_exporter_podresources_up").value == 1
    assert one(series, "openxpu_exporter_attributed_devices").value == 3


async def test_dcgm_names_carry_pod_labels_too(
    manual_xpud: XpudProcess, kubelet: FakeKubelet, make_exporter: Any
) -> None:
    with manual_xpud.client() as c:
        uuid = c.telemetry().devices[5].uuid
    kubelet.pods = [pod("p", "ns", {"c": [uuid]})]
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket,
        kubelet_socket=kubelet.socket_path,
        refresh_interval=0,
        dcgm_compat=True,
    )
    s = one(await scrape(exporter), "DCGM_FI_DEV_FB_USED", UUID=uuid)
    assert (s.labels["pod"], s.labels["namespace"], s.labels["container"]) == ("p", "ns", "c")
    assert s.labels["gpu"] == "5" and s.labels["device"] == "xpu5"


async def test_missing_kubelet_socket_keeps_serving_and_says_so(
    manual_xpud: XpudProcess, short_root: Path, make_exporter: Any
) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket,
        kubelet_socket=short_root / "absent.sock",
        refresh_interval=0,
    )
    series = await scrape(exporter)
    assert one(series, "openxpu_exporter_podresources_up").value == 0
    assert len(select(series, "openxpu_utilization_ratio")) == 8
    assert all("pod" not in s.labels for s in select(series, "openxpu_utilization_ratio"))
    assert one(series, "openxpu_exporter_read_errors_total", source="podresources").value >= 1


async def test_attribution_follows_the_kubelet(
    manual_xpud: XpudProcess, short_root: Path, make_exporter: Any
) -> None:
    """The socket appears late, pods come and go; when the socket goes, the labels go too."""
    sock = short_root / "late.sock"
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, kubelet_socket=sock, refresh_interval=0
    )
    assert exporter.state.podresources_up is False
    with manual_xpud.client() as c:
        uuid = c.telemetry().devices[0].uuid
    kubelet = FakeKubelet(sock).start()
    try:
        kubelet.pods = [pod("late", "ns", {"c": [uuid]})]
        await exporter.refresh_attribution()
        series = await scrape(exporter)
        assert one(series, "openxpu_temperature_celsius", uuid=uuid).labels["pod"] == "late"
        assert one(series, "openxpu_exporter_podresources_up").value == 1
        kubelet.pods = []
        await exporter.refresh_attribution()
        series = await scrape(exporter)
        assert "pod" not in one(series, "openxpu_temperature_celsius", uuid=uuid).labels
        kubelet.pods = [pod("again", "ns", {"c": [uuid]})]
        await exporter.refresh_attribution()
    finally:
        kubelet.stop()
    # The socket is gone (as while the kubelet restarts): labels go with it, metric says so.
    await exporter.refresh_attribution()
    series = await scrape(exporter)
    assert one(series, "openxpu_exporter_podresources_up").value == 0
    assert "pod" not in one(series, "openxpu_temperature_celsius", uuid=uuid).labels


async def test_attribution_off_emits_no_kubelet_metrics(
    manual_xpud: XpudProcess, make_exporter: Any
) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0
    )
    series = await scrape(exporter)
    assert not select(series, "openxpu_exporter_podresources_up")
    assert len(select(series, "openxpu_utilization_ratio")) == 8


async def test_a_kubelet_that_stops_answering_keeps_the_last_mapping(
    manual_xpud: XpudProcess, kubelet: FakeKubelet, make_exporter: Any
) -> None:
    """A kubelet restart leaves its socket behind unanswered: the pods still hold their
    devices, so the last mapping stays (rather than every series' labels flapping) while
    podresources_up says the labels may be old; the next answer replaces it."""
    with manual_xpud.client() as c:
        uuid = c.telemetry().devices[0].uuid
    kubelet.pods = [pod("steady", "ns", {"c": [uuid]})]
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, kubelet_socket=kubelet.socket_path, refresh_interval=0
    )
    assert (
        one(await scrape(exporter), "openxpu_temperature_celsius", uuid=uuid).labels["pod"]
        == "steady"
    )
    kubelet.stop()
    # What a killed kubelet leaves: its socket file, with nobody listening on it.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(kubelet.socket_path))
    await exporter.refresh_attribution()
    series = await scrape(exporter)
    assert one(series, "openxpu_exporter_podresources_up").value == 0
    assert one(series, "openxpu_exporter_read_errors_total", source="podresources").value == 1
    assert one(series, "openxpu_temperature_celsius", uuid=uuid).labels["pod"] == "steady"
    kubelet.socket_path.unlink()
    kubelet.pods = [pod("next", "ns", {"c": [uuid]})]
    kubelet.start()
    await exporter.refresh_attribution()
    series = await scrape(exporter)
    assert one(series, "openxpu_exporter_podresources_up").value == 1
    assert one(series, "openxpu_temperature_celsius", uuid=uuid).labels["pod"] == "next"
