"""Isolation on the node (issue 14): a workload reaches xpud only through its allocation's
scope socket, and sees and touches only the devices it was given. Real xpud, real sockets,
raw HTTP (not only the client library): a workload need not use our library."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openxpu_runtime import api
from openxpu_runtime.client import AsyncXpudClient, unix_transport
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.daemon.app import admin_routes, create_app, create_workload_app
from openxpu_runtime.engine import Engine
from openxpu_runtime.errors import NotFound, OutOfMemory
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.testing import XpudProcess
from openxpu_runtime.xpu import XpuSession

pytestmark = pytest.mark.integration

GIB = 1 << 30


def raw(path: Path | str) -> httpx.Client:
    """An HTTP client on a unix socket, as any program in a container could write one."""
    return httpx.Client(transport=unix_transport(Path(path)), base_url="http://xpud")


def scope_request(*devices: str, limit: int | None = None) -> dict[str, Any]:
    return {"devices": [{"id": d, "memory_limit_bytes": limit} for d in devices]}


@pytest.fixture
def node(short_root: Path) -> Iterator[XpudProcess]:
    """xpud with 8 devices on the manual clock."""
    proc = XpudProcess(short_root, "--profile", "x1-8", "--clock", "manual").start()
    yield proc
    proc.stop()


@pytest.fixture
def admin(node: XpudProcess) -> Iterator[httpx.Client]:
    with raw(node.socket) as client:
        yield client


@pytest.fixture
def uuids(admin: httpx.Client) -> list[str]:
    return [d["uuid"] for d in admin.get("/v1/inventory").json()["devices"]]


def create_scope(admin: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = admin.post("/v1/scopes", json=body)
    assert response.status_code == 201, response.text
    scope: dict[str, Any] = response.json()
    return scope


@pytest.fixture
def pair(admin: httpx.Client, uuids: list[str]) -> dict[str, Any]:
    """A container given host devices 5 and 3, in that order (whole devices)."""
    return create_scope(admin, scope_request(uuids[5], uuids[3]))


@pytest.fixture
def replica(admin: httpx.Client, uuids: list[str]) -> dict[str, Any]:
    """A container given one shared replica of device 6, limited to 1 GiB."""
    return create_scope(admin, scope_request(f"{uuids[6]}::2", limit=GIB))


def open_context(client: httpx.Client, *devices: str, **extra: Any) -> httpx.Response:
    return client.post(
        "/v1/contexts", json={"pid": 1, "name": "w", "devices": list(devices), **extra}
    )


def context_id(response: httpx.Response) -> str:
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def allocate(client: httpx.Client, ctx: str, size: int, device: str = "0") -> httpx.Response:
    return client.post(f"/v1/contexts/{ctx}/allocations", json={"device": device, "size": size})


def error_code(response: httpx.Response) -> str:
    return str(response.json()["error"]["code"])


# -- the sockets ------------------------------------------------------------------------


def connects_as_nobody(path: Path) -> bool:
    """Whether uid/gid 65534 can connect to `path` (a forked child drops to it)."""
    pid = os.fork()
    if pid == 0:  # the child: only plain system calls until _exit
        code = 1
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_the_admin_socket_is_root_only_and_a_scope_socket_any_uid(
    node: XpudProcess, admin: httpx.Client, pair: dict[str, Any]
) -> None:
    os.chmod(node.paths.root, 0o755)  # mkdtemp's 0700 would stop any other uid first
    sock = Path(pair["socket"])
    assert sock == node.paths.run_dir / "scopes" / pair["id"] / "xpud.sock"
    assert re.fullmatch(r"[0-9a-f]{16}", pair["id"]), "random: not guessable from the host"
    assert stat.S_ISSOCK(node.socket.stat().st_mode) and mode(node.socket) == 0o600
    assert mode(sock.parent.parent) == 0o711, "scopes/ is not listable by other users"
    assert mode(sock.parent) == 0o755 and mode(sock) == 0o666
    assert connects_as_nobody(sock)
    assert not connects_as_nobody(node.socket)


# -- what a scope sees ------------------------------------------------------------------


def test_a_scope_sees_only_its_devices_numbered_from_0(
    node: XpudProcess, uuids: list[str], pair: dict[str, Any]
) -> None:
    assert [(d["index"], d["host_index"]) for d in pair["devices"]] == [(0, 5), (1, 3)]
    with raw(pair["socket"]) as w:
        inventory = w.get("/v1/inventory").json()["devices"]
        assert [(d["index"], d["uuid"]) for d in inventory] == [(0, uuids[5]), (1, uuids[3])]
        telemetry = w.get("/v1/telemetry").json()["devices"]
        assert [(d["index"], d["uuid"]) for d in telemetry] == [(0, uuids[5]), (1, uuids[3])]
        assert w.get("/v1/devices/1").json()["uuid"] == uuids[3]
        assert w.get(f"/v1/devices/{uuids[5]}").json()["index"] == 0
        for other in ("2", "7", uuids[0], uuids[4]):
            response = w.get(f"/v1/devices/{other}")
            assert response.status_code == 404 and error_code(response) == "not_found", other
        assert w.get("/v1/version").json()["scope"] == pair["id"]
        with w.stream("GET", "/v1/events") as events:
            lines = events.iter_lines()
            snapshot = [next(lines) for _ in range(2)]
        assert [api.Event.model_validate_json(e).device_index for e in snapshot] == [0, 1]


def test_a_context_on_a_device_outside_the_scope_is_refused(
    admin: httpx.Client, uuids: list[str], pair: dict[str, Any]
) -> None:
    with raw(pair["socket"]) as w:
        for devices in ([uuids[0]], ["2"], [uuids[5], uuids[4]]):
            response = open_context(w, *devices)
            assert response.status_code == 404 and error_code(response) == "not_found"
        ctx = context_id(open_context(w, "0", "1"))
        # Launching or allocating on a host device by its host index does not reach it either.
        assert allocate(w, ctx, 1, device="5").status_code == 404
        launch = w.post(f"/v1/contexts/{ctx}/launches", json={"device": uuids[0], "ops": 1e9})
        assert launch.status_code == 404
        view = w.get(f"/v1/contexts/{ctx}").json()
        assert [(d["index"], d["uuid"]) for d in view["devices"]] == [(0, uuids[5]), (1, uuids[3])]
    # The admin socket still opens contexts on any device.
    context_id(open_context(admin, uuids[0]))


def test_a_replicas_memory_limit_holds_whatever_the_client_sends(
    admin: httpx.Client, uuids: list[str], replica: dict[str, Any]
) -> None:
    with raw(replica["socket"]) as w:
        device = w.get("/v1/devices/0").json()
        assert (device["memory_total_bytes"], device["memory_free_bytes"]) == (GIB, GIB)
        unlimited = context_id(open_context(w, "0"))
        response = allocate(w, unlimited, GIB + 1)
        assert response.status_code == 409 and error_code(response) == "out_of_memory"
        larger = open_context(w, "0", memory_limits={"0": 8 * GIB})
        assert larger.json()["devices"][0]["memory_limit_bytes"] == GIB
        assert allocate(w, context_id(larger), 2 * GIB).status_code == 409
        # The limit is the allocation's, not each context's: two contexts share it.
        assert allocate(w, unlimited, GIB // 2 + GIB // 4).status_code == 201
        response = allocate(w, context_id(larger), GIB // 2)
        assert response.status_code == 409 and "allocation's" in response.json()["error"]["message"]
        assert allocate(w, context_id(larger), GIB // 4).status_code == 201
        device = w.get("/v1/devices/0").json()
        assert (device["memory_used_bytes"], device["memory_free_bytes"]) == (GIB, 0)
    # The same device through the admin socket: the whole device.
    host = context_id(open_context(admin, uuids[6]))
    assert allocate(admin, host, 2 * GIB, device=uuids[6]).status_code == 201


def test_a_scope_lists_only_its_own_processes(
    admin: httpx.Client, uuids: list[str], pair: dict[str, Any]
) -> None:
    other_scope = create_scope(admin, scope_request(uuids[3]))  # another container's
    host = context_id(open_context(admin, uuids[5]))
    with raw(other_scope["socket"]) as o:
        other = context_id(open_context(o, "0"))
    with raw(pair["socket"]) as w:
        mine = context_id(open_context(w, "0"))
        assert [p["id"] for p in w.get("/v1/processes").json()] == [mine]
        for reading in (w.get("/v1/devices/0").json(), w.get("/v1/telemetry").json()["devices"][1]):
            assert [p["context_id"] for p in reading["processes"]] in ([mine], [])
        for ctx in (host, other):  # not there at all: not even "not yours"
            for method, path in (
                ("GET", f"/v1/contexts/{ctx}"),
                ("POST", f"/v1/contexts/{ctx}/heartbeat"),
                ("DELETE", f"/v1/contexts/{ctx}"),
            ):
                response = w.request(method, path)
                assert response.status_code == 404 and error_code(response) == "not_found"
            assert allocate(w, ctx, 1).status_code == 404
    listed = {p["id"]: p["scope"] for p in admin.get("/v1/processes").json()}
    assert listed == {host: None, other: other_scope["id"], mine: pair["id"]}


def admin_only_requests() -> list[tuple[str, str]]:
    """(method, path) of every route the admin API has and the workload API does not,
    read from the apps themselves: a route added later is covered too."""
    engine = Engine(node="routes", profile=BUILTIN["x1-2"], clock=ManualClock())
    admin_app = create_app(engine)
    served = {(p, m) for p, ms in admin_routes(create_workload_app(engine, admin_app)) for m in ms}
    return sorted(
        (m, re.sub(r"\{[^}]+\}", "0", p))
        for p, methods in admin_routes(admin_app)
        for m in methods - {"HEAD"}
        if (p, m) not in served
    )


def test_every_admin_route_is_refused_through_a_scope(
    admin: httpx.Client, pair: dict[str, Any]
) -> None:
    refused = admin_only_requests()
    assert {p for _, p in refused} >= {
        "/v1/faults",
        "/v1/faults/0",
        "/v1/clock/advance",
        "/v1/scopes",
    }
    bodies = {
        "/v1/faults": {"device": "0", "code": 79},
        "/v1/clock/advance": {"seconds": 1},
        "/v1/scopes": scope_request("0"),
    }
    with raw(pair["socket"]) as w:
        for method, path in refused:
            response = w.request(method, path, json=bodies.get(path) if method == "POST" else None)
            assert response.status_code == 403, (method, path, response.text)
            assert error_code(response) == "permission_denied"
        # Not even on its own device, by its own index or by UUID.
        for device in ("0", pair["devices"][0]["uuid"]):
            assert w.post("/v1/faults", json={"device": device, "code": 79}).status_code == 403
            assert w.delete(f"/v1/faults/{device}").status_code == 403
    devices = admin.get("/v1/telemetry").json()["devices"]
    assert all(d["health"] == "Healthy" for d in devices), "nothing the scope sent took effect"
    assert [s["id"] for s in admin.get("/v1/scopes").json()] == [pair["id"]]
    # The same operations on the admin socket work.
    assert admin.post("/v1/faults", json={"device": "5", "code": 79}).json()["health"] == "Lost"
    assert admin.delete("/v1/faults/5").json()["health"] == "Healthy"
    assert admin.post("/v1/clock/advance", json={"seconds": 1}).status_code == 200


# -- the scope's life cycle -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (scope_request("XPU-00000000-0000-0000-0000-000000000000"), 404, "no device"),
        (scope_request("8"), 404, "no device '8'"),
        (scope_request("3::x"), 400, "not a replica ID"),
        (scope_request("3", "3"), 400, "listed twice"),
        (
            {"devices": [{"id": "3::0", "memory_limit_bytes": GIB}, {"id": "3::1"}]},
            400,
            "some of its IDs have a memory limit",
        ),
        (scope_request("3", limit=65 * GIB), 400, "exceeds"),
        ({"devices": []}, 422, "devices"),
        ({"devices": [{"id": "3"}], "owner": "me"}, 422, "owner"),
    ],
)
def test_a_bad_scope_is_refused_and_nothing_is_created(
    admin: httpx.Client, body: dict[str, Any], status: int, message: str
) -> None:
    response = admin.post("/v1/scopes", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]
    assert admin.get("/v1/scopes").json() == []


def test_replicas_of_one_device_make_one_device_and_add_their_limits(
    admin: httpx.Client, uuids: list[str]
) -> None:
    body = scope_request(f"{uuids[2]}::0", f"{uuids[2]}::3", limit=GIB)
    body["labels"] = {"resource": "openxpu.io/xpu"}
    scope = create_scope(admin, body)
    assert scope["device_ids"] == [f"{uuids[2]}::0", f"{uuids[2]}::3"]
    assert [(d["uuid"], d["memory_limit_bytes"]) for d in scope["devices"]] == [(uuids[2], 2 * GIB)]
    assert admin.get(f"/v1/scopes/{scope['id']}").json() == scope
    assert admin.get("/v1/scopes").json() == [scope]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_scopes_and_their_contexts_survive_a_restart(
    node: XpudProcess, admin: httpx.Client, replica: dict[str, Any], sig: int
) -> None:
    with raw(replica["socket"]) as w:
        ctx = context_id(open_context(w, "0"))
        assert allocate(w, ctx, GIB // 2).status_code == 201
    node.stop(sig)
    node.start()
    assert Path(replica["socket"]).exists()
    with raw(replica["socket"]) as w:  # the same path: a container's mount still finds it
        assert [p["id"] for p in w.get("/v1/processes").json()] == [ctx]
        response = allocate(w, ctx, GIB // 2 + 1)
        assert response.status_code == 409, "the limit is kept too"
        assert w.post("/v1/faults", json={"device": "0", "code": 79}).status_code == 403
    with raw(node.socket) as restarted:
        assert [s["id"] for s in restarted.get("/v1/scopes").json()] == [replica["id"]]


def test_deleting_a_scope_ends_its_event_stream(
    admin: httpx.Client, replica: dict[str, Any]
) -> None:
    with raw(replica["socket"]) as w, w.stream("GET", "/v1/events") as events:
        lines = events.iter_lines()
        assert api.Event.model_validate_json(next(lines)).type == "snapshot"
        assert admin.delete(f"/v1/scopes/{replica['id']}").status_code == 204
        admin.post("/v1/faults", json={"device": "6", "code": 79})  # an event to deliver
        assert list(lines) == [], "the stream ended, and showed nothing after the delete"


def test_deleting_a_scope_frees_its_memory_and_removes_its_socket(
    node: XpudProcess, admin: httpx.Client, replica: dict[str, Any]
) -> None:
    sock = Path(replica["socket"])
    with raw(sock) as w:
        ctx = context_id(open_context(w, "0"))
        assert allocate(w, ctx, GIB).status_code == 201
        assert admin.delete(f"/v1/scopes/{replica['id']}").status_code == 204
        with pytest.raises(httpx.TransportError):  # its connections end with it
            w.get("/v1/processes")
    assert not sock.exists() and not sock.parent.exists()
    assert admin.get("/v1/processes").json() == []
    assert admin.get("/v1/devices/6").json()["memory_used_bytes"] == 0
    assert admin.delete(f"/v1/scopes/{replica['id']}").status_code == 404
    node.restart()
    assert not sock.exists(), "a deleted scope is not served again"


def test_the_device_plugins_calls_create_list_and_delete_a_scope(
    node: XpudProcess, uuids: list[str]
) -> None:
    """The calls the plugin's Allocate and its reconciliation make, with its async client."""

    async def plugin() -> tuple[api.Scope, list[api.Scope], list[api.Scope]]:
        async with AsyncXpudClient(node.socket) as client:
            replicas = [
                api.ScopeDeviceRequest(id=f"{uuids[1]}::{n}", memory_limit_bytes=GIB)
                for n in (0, 1)
            ]
            scope = await client.create_scope(
                api.ScopeRequest(devices=replicas, labels={"resource": "openxpu.io/xpu"})
            )
            listed = await client.scopes()
            await client.delete_scope(scope.id)
            with pytest.raises(NotFound):
                await client.delete_scope(scope.id)
            return scope, listed, await client.scopes()

    scope, listed, after = asyncio.run(plugin())
    assert listed == [scope] and after == []
    assert scope.device_ids == [f"{uuids[1]}::0", f"{uuids[1]}::1"]
    assert scope.labels == {"resource": "openxpu.io/xpu"}
    assert [(d.index, d.host_index, d.memory_limit_bytes) for d in scope.devices] == [
        (0, 1, 2 * GIB)
    ]
    assert scope.socket == str(node.paths.run_dir / "scopes" / scope.id / "xpud.sock")


# -- the client library -----------------------------------------------------------------


def test_a_session_in_a_container_uses_its_scope_socket(
    node: XpudProcess, uuids: list[str], replica: dict[str, Any]
) -> None:
    # What the device plugin gives a container: the scope's socket and its device; no limit
    # in the environment, and a bogus one would not help either.
    env = {"XPUD_SOCKET": replica["socket"], "XPU_VISIBLE_DEVICES": uuids[6]}
    with XpuSession(env=env) as xpu:
        assert xpu.device_count() == 1 and xpu.get_device_properties(0).uuid == uuids[6]
        assert xpu.mem_get_info(0) == (GIB, GIB)
        with pytest.raises(OutOfMemory):
            xpu.malloc(GIB + 1)
        buffer = xpu.malloc(GIB // 4)
        assert xpu.mem_get_info(0) == (GIB - GIB // 4, GIB)
        xpu.free(buffer)
    with XpuSession(env={**env, "XPU_MEMORY_LIMIT_0": "8Gi"}) as xpu:
        assert xpu.mem_get_info(0) == (GIB, GIB)
        with pytest.raises(OutOfMemory):
            xpu.malloc(2 * GIB)
    with pytest.raises(NotFound):  # another device of the node does not exist in the scope
        XpuSession(env={**env, "XPU_VISIBLE_DEVICES": uuids[0]})
    # Root on the host keeps using the admin socket.
    with XpuSession(socket=node.socket, env={"XPU_VISIBLE_DEVICES": "6"}) as xpu:
        assert xpu.mem_get_info(0)[1] == 64 * GIB
