"""The plugin against a real xpud and a kubelet-side protocol peer, over real unix sockets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from pathlib import Path

import grpc
import pytest
import yaml
from grpc import aio

from openxpu_device_plugin.plugin import endpoint_for
from openxpu_device_plugin.scopes import SparePool
from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient, XpudClient
from openxpu_runtime.errors import PermissionDenied
from openxpu_runtime.testing import XpudProcess
from openxpu_runtime.xpu import XpuSession

from .conftest import StartPlugin, eventually, scope_dir, scope_of
from .kubelet_peer import Devices, KubeletPeer

pytestmark = pytest.mark.integration


def all_health(devices: Devices, health: str) -> bool:
    return bool(devices) and all(h == health for h in devices.values())


def scope_ids(xpud: XpudProcess) -> set[str]:
    with xpud.client() as c:
        return {s.id for s in c.scopes()}


def uuids(xpud: XpudProcess) -> list[str]:
    with xpud.client() as c:
        return [d.uuid for d in c.inventory().devices]


async def test_registers_then_lists_devices_with_topology(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    reg = await kubelet.wait_registered()
    assert reg.request.version == "v1beta1"
    assert reg.request.resource_name == "openxpu.io/xpu"
    assert reg.request.endpoint == "openxpu.io-xpu.sock"
    assert reg.options.get_preferred_allocation_available
    _, devices = await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    assert sorted(devices) == sorted(uuids(xpud))
    with xpud.client() as c:
        numa = {d.uuid: d.numa_node for d in c.inventory().devices}
    assert kubelet.current.topology == {u: [n] for u, n in numa.items()}


async def test_fault_turns_device_unhealthy_and_recovery_healthy(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    u0, u1 = uuids(xpud)[:2]
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="0", code=48))  # ECC DBE: sticky
        _, devices = await kubelet.wait_devices(lambda d: d[u0] == "Unhealthy")
        assert sum(h == "Unhealthy" for h in devices.values()) == 1
        c.clear_faults("0")
        await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
        # A timed fault recovers by itself, and the plugin says so.
        c.inject_fault(api.FaultRequest(device="1", code=94, recover_after_seconds=1.0))
        await kubelet.wait_devices(lambda d: d[u1] == "Unhealthy")
        await kubelet.wait_devices(lambda d: all_health(d, "Healthy"), within=15)
        # Degraded still runs work: it stays schedulable.
        c.inject_fault(api.FaultRequest(device="0", code=43))
        c.inject_fault(api.FaultRequest(device="0", code=79))  # lost
        await kubelet.wait_devices(lambda d: d[u0] == "Unhealthy")
    assert kubelet.current.updates[-1][1][u1] == "Healthy"


async def test_allocate_gives_the_container_only_its_scope(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin, short_root: Path
) -> None:
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    ids = uuids(xpud)
    resp = await kubelet.allocate([ids[2], ids[3]], [ids[0]])
    first, second = resp.container_responses
    assert first.envs["XPU_VISIBLE_DEVICES"] == f"{ids[2]},{ids[3]}"
    assert first.envs["XPUD_SOCKET"] == "/run/openxpu/xpud.sock"
    assert not any(k.startswith("XPU_MEMORY_LIMIT") for k in first.envs)
    assert second.envs["XPU_VISIBLE_DEVICES"] == ids[0]
    scope = scope_of(xpud, first)
    assert scope.device_ids == [ids[2], ids[3]]
    assert scope.labels == {"resource": "openxpu.io/xpu"}
    assert scope_of(xpud, second).device_ids == [ids[0]]
    directory = short_root / "run/openxpu/scopes" / scope.id
    mounts = {m.container_path: (m.host_path, m.read_only) for m in first.mounts}
    # Never the host's run directory (the admin socket): the scope's own, in its place.
    assert mounts["/run/openxpu"] == (str(directory), True)
    assert str(short_root / "run/openxpu") not in {h for h, _ in mounts.values()}
    # xpud made its device nodes as plain files here, so they are bind-mounted, not DeviceSpecs.
    assert mounts["/dev/xpu2"] == (str(short_root / "dev/xpu2"), False)
    assert "/dev/xpu3" in mounts and not first.devices
    assert not first.cdi_devices
    # What the container reaches through that mount: its two devices, numbered 0 and 1.
    env = {**first.envs, "XPUD_SOCKET": str(directory / "xpud.sock")}
    with XpuSession(env=env) as session:
        assert [(d.index, d.uuid) for d in session.devices] == [(0, ids[2]), (1, ids[3])]
    with XpudClient(directory / "xpud.sock") as workload, pytest.raises(PermissionDenied):
        workload.inject_fault(api.FaultRequest(device="0", code=79))


async def test_a_failed_allocate_leaves_no_scope_behind(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    """The kubelet starts no container of a failed Allocate: the scopes made for the
    request's other containers are deleted before the error is answered."""
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    ids = uuids(xpud)
    await eventually("two spare scopes for each device", lambda: len(scope_ids(xpud)) == 16)
    with pytest.raises(aio.AioRpcError) as err:
        # Two IDs: the first container's scope is made for it, not taken from the spares.
        await kubelet.allocate([ids[1], ids[3]], [ids[2], "XPU-nope"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(scope_ids(xpud)) == 16, "the first container's scope was deleted"
    # A spare handed to a failed request goes too, and the pool makes another.
    spares = scope_ids(xpud)
    with pytest.raises(aio.AioRpcError):
        await kubelet.allocate([ids[1]], ["XPU-nope"])
    await eventually("the spare made again", lambda: len(scope_ids(xpud) - spares) == 1)
    assert len(scope_ids(xpud)) == 16


async def test_a_one_xpu_allocate_takes_a_spare_scope_made_ahead(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    """Allocate need not wait for xpud: two spares per ID, taken and then made again."""
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    ids = uuids(xpud)
    await eventually("two spare scopes for each device", lambda: len(scope_ids(xpud)) == 16)
    spares = scope_ids(xpud)
    (container,) = (await kubelet.allocate([ids[5]])).container_responses
    taken = scope_of(xpud, container)
    assert taken.id in spares and taken.device_ids == [ids[5]]
    await eventually("the next spare", lambda: len(scope_ids(xpud)) == 17)
    # An unhealthy device's spare goes; the others stay.
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="2", code=48))
    await eventually("device 2's spares gone", lambda: len(scope_ids(xpud)) == 15)
    with xpud.client() as c:
        assert [ids[2]] not in [s.device_ids for s in c.scopes()]


async def test_an_init_container_and_its_container_both_get_a_spare_while_xpud_is_silent(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    """The kubelet allocates an init container's XPU and then its app container's, the same
    ID back to back, each container with its own scope: both come from spares made ahead,
    so neither waits for xpud (stopped here, as if busy)."""
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    ids = uuids(xpud)
    await eventually("two spare scopes for each device", lambda: len(scope_ids(xpud)) == 16)
    spares = scope_ids(xpud)
    assert xpud.proc is not None
    os.kill(xpud.proc.pid, signal.SIGSTOP)
    try:
        init, app = [
            (await kubelet.allocate([ids[3]])).container_responses[0] for _ in ("init", "app")
        ]
    finally:
        os.kill(xpud.proc.pid, signal.SIGCONT)
    assert {scope_dir(init).name, scope_dir(app).name} <= spares
    assert scope_dir(init) != scope_dir(app)
    await eventually("the spares made again", lambda: len(scope_ids(xpud)) == 18)


async def test_spares_are_made_again_only_once_the_answer_is_sent(xpud: XpudProcess) -> None:
    """Making a spare costs xpud and the plugin CPU that an Allocate's answer would wait
    for: while an Allocate is being answered, the pool makes none, however many chances it
    gets; once answered, it makes the one missing."""
    ids = uuids(xpud)[:2]
    wanted = {i: api.ScopeRequest(devices=[api.ScopeDeviceRequest(id=i)]) for i in ids}
    async with AsyncXpudClient(xpud.socket) as client:
        pool = SparePool(client, lambda: wanted)
        running = asyncio.create_task(pool.run())
        try:
            await eventually("two spares for each ID", lambda: len(scope_ids(xpud)) == 4)
            answered = pool.answering()
            taken = await pool.create_scope(wanted[ids[0]])
            assert taken.id in scope_ids(xpud) and not pool.holds(taken.id)
            # Each round trip of ours lets the pool's task run and reach xpud first.
            for _ in range(20):
                assert len(await client.scopes()) == 4
            answered()
            await eventually("the spare made again", lambda: len(scope_ids(xpud)) == 5)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


async def test_allocate_refuses_unknown_and_unhealthy_ids(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    ids = uuids(xpud)
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate(["XPU-nope"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown device ID 'XPU-nope'" in (err.value.details() or "")
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="5", code=48))
    await kubelet.wait_devices(lambda d: d[ids[5]] == "Unhealthy")
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate([ids[4], ids[5]])
    assert f"device '{ids[5]}' (xpu 5) is Unhealthy" in (err.value.details() or "")


async def test_cdi_strategy_names_devices_and_writes_the_spec(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin, short_root: Path
) -> None:
    await start_plugin(device_list_strategy="cdi", device_id_strategy="index")
    _, devices = await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    assert sorted(devices) == [str(i) for i in range(8)]
    ids = uuids(xpud)
    resp = await kubelet.allocate(["1", "6"])
    (c,) = resp.container_responses
    assert [d.name for d in c.cdi_devices] == [f"openxpu.io/xpu={ids[i]}" for i in (1, 6)]
    # The indices as the container's scope numbers them, like nvidia-smi in a GPU container.
    assert c.envs["XPU_VISIBLE_DEVICES"] == "0,1"
    scope = scope_of(xpud, c)
    assert scope.device_ids == ["1", "6"]
    assert [(d.index, d.host_index) for d in scope.devices] == [(0, 1), (1, 6)]
    # The runtime injects the device nodes from the spec; the scope comes with Allocate.
    assert not c.devices
    assert [(m.container_path, m.host_path) for m in c.mounts] == [
        ("/run/openxpu", str(short_root / "run/openxpu/scopes" / scope.id))
    ]
    spec = yaml.safe_load((short_root / "var/run/cdi/openxpu.io-xpu.yaml").read_text())
    assert spec["kind"] == "openxpu.io/xpu"
    names = {d["name"] for d in spec["devices"]}
    assert set(ids) <= names and {"0", "7", "all"} <= names
    # No device and no spec-wide edit mounts the host's run directory into a container.
    assert "/run/openxpu" not in yaml.safe_dump(spec).replace("/run/openxpu/xpud.sock", "")


async def test_kubelet_restart_leads_to_reregistration(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    plugin = await start_plugin()
    await kubelet.wait_registered()
    back = await kubelet.restart()
    reg = await kubelet.wait_registered(2, within=5)
    assert reg.at - back < 1.0
    _, devices = await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    assert len(devices) == 8
    # SIGHUP does the same.
    plugin.hangup()
    await kubelet.wait_registered(3, within=5)
    await asyncio.wait_for(plugin.registered.wait(), 5)  # the plugin's side of the same call
    assert plugin.registrations == 3


async def test_failed_start_is_retried_until_the_kubelet_appears(
    xpud: XpudProcess,
    plugin_dir: Path,
    start_plugin: StartPlugin,
) -> None:
    failed_twice = asyncio.Event()

    class CountFailures(logging.Handler):
        count = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "start failed" in record.getMessage():
                self.count += 1
                if self.count == 2:
                    failed_twice.set()

    handler = CountFailures()
    logging.getLogger("openxpu_device_plugin.plugin").addHandler(handler)
    try:
        plugin = await start_plugin(register_timeout=0.3)
        # No kubelet: registration fails, and is tried again (not given up after one failure).
        await asyncio.wait_for(failed_twice.wait(), 10)
    finally:
        logging.getLogger("openxpu_device_plugin.plugin").removeHandler(handler)
    assert plugin.registrations == 0 and not plugin.registered.is_set()
    peer = KubeletPeer(plugin_dir)
    await peer.start()
    try:
        await peer.wait_registered(within=15)
        await asyncio.wait_for(plugin.registered.wait(), 5)
        assert plugin.registrations == 1
    finally:
        await peer.stop()


async def test_a_crashed_health_watch_is_restarted_not_left_stale(
    xpud: XpudProcess,
    kubelet: KubeletPeer,
    start_plugin: StartPlugin,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception in the health task (say, an event a newer xpud sends that this
    plugin cannot handle) must not leave the kubelet with the last health it was told."""
    plugin = await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    u0 = uuids(xpud)[0]
    real_set_health = plugin.rm.set_health
    crashes = 0

    def set_health_that_breaks_once(uuid: str, health: str, reason: str = "") -> bool:
        nonlocal crashes
        if health == "Unhealthy" and not crashes:
            crashes += 1
            raise RuntimeError("an event this plugin cannot handle")
        return real_set_health(uuid, health, reason)

    monkeypatch.setattr(plugin.rm, "set_health", set_health_that_breaks_once)
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="0", code=48))  # sticky: xpud keeps saying so
        # While the watch is down nothing vouches for the devices; the restarted watch re-reads
        # xpud and reports the fault it first choked on, on that device alone.
        await kubelet.wait_devices(lambda d: all_health(d, "Unhealthy"))
        await kubelet.wait_devices(
            lambda d: d[u0] == "Unhealthy" and sum(h == "Healthy" for h in d.values()) == 7,
            within=15,
        )
        assert crashes == 1
        c.clear_faults("0")
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"), within=15)
    assert any(
        "the health watch failed (RuntimeError: an event this plugin cannot handle)"
        in r.getMessage()
        for r in caplog.records
    )


async def test_xpud_unreachable_means_all_unhealthy_then_reconnects(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    xpud.stop()
    _, devices = await kubelet.wait_devices(lambda d: all_health(d, "Unhealthy"))
    assert len(devices) == 8
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate([next(iter(devices))])
    assert "xpud is unreachable" in (err.value.details() or "")
    await asyncio.to_thread(xpud.start)
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"), within=15)


async def test_time_slicing_replicas_and_the_greater_than_one_refusal(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin, short_root: Path
) -> None:
    config = short_root / "config.yaml"
    config.write_text(
        "version: v1\n"
        "sharing:\n"
        "  timeSlicing:\n"
        "    replicas: 4\n"
        "    renameByDefault: true\n"
        "    failRequestsGreaterThanOne: true\n"
    )
    await start_plugin(file=config)
    reg = await kubelet.wait_registered()
    assert reg.request.resource_name == "openxpu.io/xpu.shared"
    _, devices = await kubelet.wait_devices(lambda d: len(d) == 32)
    ids = uuids(xpud)
    assert set(devices) == {f"{u}::{n}" for u in ids for n in range(4)}
    resp = await kubelet.allocate([f"{ids[3]}::2"])
    envs = resp.container_responses[0].envs
    with xpud.client() as c:
        memory = c.inventory().devices[3].memory_total_bytes
    assert envs["XPU_VISIBLE_DEVICES"] == ids[3]
    assert envs["XPU_MEMORY_LIMIT_0"] == str(memory // 4)
    # xpud holds the replica to it, whatever the workload sends.
    scope = scope_of(xpud, resp.container_responses[0])
    assert [(d.uuid, d.memory_limit_bytes) for d in scope.devices] == [(ids[3], memory // 4)]
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate([f"{ids[0]}::0", f"{ids[1]}::0"])
    assert err.value.details() == (
        "request for 'openxpu.io/xpu.shared: 2' too large: "
        "maximum request size for shared resources is 1"
    )


async def test_preferred_allocation_on_2x4_link_groups(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    await start_plugin()
    await kubelet.wait_registered()
    ids = uuids(xpud)
    group = {u: i // 4 for i, u in enumerate(ids)}
    # Four devices: one whole link group.
    got = await kubelet.preferred(ids, [], 4)
    assert len({group[u] for u in got}) == 1
    # Must-include pulls the rest into its own group.
    got = await kubelet.preferred(ids, [ids[6]], 3)
    assert got[0] == ids[6] and {group[u] for u in got} == {1}
    # Two devices when group 0 has 3 free and group 1 has 2: best fit keeps group 0 whole-ish.
    avail = [ids[0], ids[1], ids[2], ids[5], ids[7]]
    got = await kubelet.preferred(avail, [], 2)
    assert set(got) == {ids[5], ids[7]}
    # Six devices span both groups, the bigger piece first.
    got = await kubelet.preferred(ids, [], 6)
    assert len(got) == 6 and len(set(got)) == 6


async def test_bad_config_on_reload_keeps_the_last_good_one(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin, short_root: Path
) -> None:
    config = short_root / "config.yaml"
    config.write_text("version: v1\nsharing:\n  timeSlicing:\n    replicas: 2\n")
    plugin = await start_plugin(file=config)
    await kubelet.wait_devices(lambda d: len(d) == 16)
    config.write_text("version: v1\nsharing:\n  timeSlicing:\n    replicas: lots\n")
    plugin.reloaded.clear()
    await asyncio.wait_for(plugin.reloaded.wait(), 5)
    assert plugin.last_config_error is not None
    assert "sharing.timeSlicing.replicas" in plugin.last_config_error
    assert plugin.config.replicas == 2 and plugin.registrations == 1
    resp = await kubelet.allocate([f"{uuids(xpud)[0]}::1"])  # still serving replicas
    assert resp.container_responses[0].envs["XPU_MEMORY_LIMIT_0"]
    # A good edit takes effect: re-registered with the new device list.
    config.write_text("version: v1\nsharing:\n  timeSlicing:\n    replicas: 3\n")
    await kubelet.wait_registered(2, within=5)
    await kubelet.wait_devices(lambda d: len(d) == 24)
    assert plugin.last_config_error is None


@pytest.mark.unit
def test_plugin_socket_name_follows_the_resource() -> None:
    assert endpoint_for("openxpu.io/xpu") == "openxpu.io-xpu.sock"
    assert endpoint_for("example.com/xpu.shared") == "example.com-xpu.shared.sock"


async def test_ignored_fault_codes_leave_devices_healthy(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    """NVIDIA's DP_DISABLE_HEALTHCHECKS with a list: those codes do not count, others do."""
    await start_plugin(env={"DP_DISABLE_HEALTHCHECKS": "48,79"})
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    u = uuids(xpud)
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="0", code=48))  # ignored
        c.inject_fault(api.FaultRequest(device="2", code=79))  # ignored although fatal
        c.inject_fault(api.FaultRequest(device="2", code=43))  # counted, but only Degraded
        c.inject_fault(api.FaultRequest(device="3", code=48))  # ignored ...
        c.inject_fault(api.FaultRequest(device="3", code=94))  # ... this one is not
        c.inject_fault(api.FaultRequest(device="1", code=94))  # not ignored: the last event
    # Events arrive in order: once device 1's is in, the others' have been judged.
    _, devices = await kubelet.wait_devices(lambda d: d[u[1]] == "Unhealthy")
    assert {x for x, h in devices.items() if h == "Unhealthy"} == {u[1], u[3]}
    with pytest.raises(aio.AioRpcError, match="94"):
        await kubelet.allocate([u[3]])
    resp = await kubelet.allocate([u[0], u[2]])
    assert resp.container_responses[0].envs["XPU_VISIBLE_DEVICES"] == f"{u[0]},{u[2]}"


async def test_health_checks_disabled_keeps_every_device_healthy(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    lost = asyncio.Event()

    class OnUnreachable(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "xpud unreachable" in record.getMessage():
                lost.set()

    handler = OnUnreachable()
    logger = logging.getLogger("openxpu_device_plugin.health")
    logger.addHandler(handler)
    try:
        await start_plugin(disable_healthchecks="all")
        await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
        u0 = uuids(xpud)[0]
        with xpud.client() as c:
            c.inject_fault(api.FaultRequest(device="0", code=79))
        xpud.stop()  # after the fault's events: the plugin has judged them once it sees this
        await asyncio.wait_for(lost.wait(), 15)
    finally:
        logger.removeHandler(handler)
    _, devices = await kubelet.wait_devices(lambda d: len(d) == 8)
    assert all_health(devices, "Healthy")
    # Still advertised, but no container starts without its scope, which only xpud makes.
    with pytest.raises(aio.AioRpcError) as err:
        await kubelet.allocate([u0])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "xpud did not create the scope" in (err.value.details() or "")


async def test_a_reload_that_ignores_a_fault_rejudges_the_device_at_once(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin, short_root: Path
) -> None:
    config = short_root / "config.yaml"
    config.write_text("version: v1\n")
    plugin = await start_plugin(file=config)
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    u0 = uuids(xpud)[0]
    with xpud.client() as c:
        c.inject_fault(api.FaultRequest(device="0", code=48))  # sticky: no later event
    await kubelet.wait_devices(lambda d: d[u0] == "Unhealthy")
    config.write_text("version: v1\nhealth:\n  disableHealthChecks: [48]\n")
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"), within=10)
    assert plugin.config.health.ignored_fault_codes == {48}


async def test_a_container_keeps_its_scope_across_an_xpud_restart(
    xpud: XpudProcess, kubelet: KubeletPeer, start_plugin: StartPlugin
) -> None:
    """A driver upgrade restarts xpud under running containers: the scope, its socket path
    (the container's mount) and its memory stay; xpu-smi there still shows device 0 only;
    and the spares the plugin made before still serve after."""
    await start_plugin()
    await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
    ids = uuids(xpud)
    await eventually("two spare scopes for each device", lambda: len(scope_ids(xpud)) == 16)
    (container,) = (await kubelet.allocate([ids[6]])).container_responses
    socket = scope_dir(container) / "xpud.sock"
    env = {**container.envs, "XPUD_SOCKET": str(socket)}
    with XpuSession(name="survivor", env=env) as session:
        session.malloc(1 << 20)
        xpud.stop()
        await kubelet.wait_devices(lambda d: all_health(d, "Unhealthy"))
        xpud.start()
        await kubelet.wait_devices(lambda d: all_health(d, "Healthy"))
        smi = await asyncio.to_thread(
            subprocess.run,
            ["xpu-smi", "--query-gpu=index,uuid", "--format=csv,noheader"],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert smi.stdout.strip() == f"0, {ids[6]}"
        with XpudClient(socket) as workload:
            (process,) = workload.processes()
        assert process.name == "survivor"
        assert [(d.index, d.memory_used_bytes) for d in process.devices] == [(0, 1 << 20)]
    (after,) = (await kubelet.allocate([ids[3]])).container_responses
    with XpudClient(scope_dir(after) / "xpud.sock") as workload:
        assert [d.uuid for d in workload.inventory().devices] == [ids[3]]
