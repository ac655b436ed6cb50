"""Benchmarks of xpud (run with `make bench`): they print figures and assert nothing timed."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.clock import SystemClock
from openxpu_runtime.engine import Engine
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.state import StateStore
from openxpu_runtime.testing import XpudProcess

pytestmark = pytest.mark.bench
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentiles(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {"p50_ms": round(q[49] * 1e3, 3), "p99_ms": round(q[98] * 1e3, 3)}


def timed(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def report(name: str, rows: list[dict[str, object]]) -> None:
    print(f"\n## {name}")
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    print(json.dumps({name: rows}))


@pytest.mark.parametrize("count", [8, 64])
def test_api_latency(short_root: Path, count: int) -> None:
    proc = XpudProcess(short_root, "--profile", "x2-64", "--count", str(count)).start()
    try:
        with proc.client() as c:
            timed(c.telemetry, 20)  # warm up the connection and the model
            rows = [
                {"devices": count, "request": name, **percentiles(timed(call, 500))}
                for name, call in (("inventory", c.inventory), ("telemetry", c.telemetry))
            ]
    finally:
        proc.stop()
    report(f"xpud API latency, {count} devices (500 requests each, one client)", rows)


def test_event_fanout_to_ten_subscribers(short_root: Path) -> None:
    proc = XpudProcess(short_root, "--profile", "x1-8").start()
    faults = 300
    subscribers = 10
    received = [0] * subscribers
    ready = threading.Barrier(subscribers + 1)

    def follow(i: int) -> None:
        with proc.client() as c:
            for event in c.events():
                if event.type == "snapshot" and event.device_index == 7:
                    ready.wait()
                elif event.type == "fault":
                    received[i] += 1
                    if received[i] == faults:
                        return

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(subscribers)]
    for t in threads:
        t.start()
    ready.wait(timeout=30)
    start = time.perf_counter()
    with proc.client() as c:
        for n in range(faults):
            c.inject_fault(api.FaultRequest(device=str(n % 8), code=63))
    for t in threads:
        t.join(timeout=60)
    elapsed = time.perf_counter() - start
    proc.stop()
    assert received == [faults] * subscribers
    report(
        "xpud event fan-out",
        [
            {
                "subscribers": subscribers,
                "events_each": faults,
                "seconds": round(elapsed, 3),
                "events_delivered_per_s": round(subscribers * faults / elapsed),
            }
        ],
    )


def test_cost_of_one_hz_telemetry_for_64_devices(short_root: Path) -> None:
    proc = XpudProcess(short_root, "--profile", "x2-64", "--tick", "1").start()
    assert proc.proc is not None
    pid = proc.proc.pid
    seconds = 20
    try:
        with proc.client() as c:
            ctx = c.open_context(
                api.ContextRequest(pid=1, name="bench", devices=[str(i) for i in range(64)])
            )
            peak = c.inventory().devices[0].peak_ops_per_second
            for i in range(64):  # keep every device busy through the measurement
                c.launch(ctx.id, str(i), peak * (seconds + 5))
            time.sleep(2)
            cpu0 = cpu_seconds(pid)
            for _ in range(seconds):  # one telemetry read a second, as a scraper would
                c.telemetry()
                time.sleep(1)
            cpu1 = cpu_seconds(pid)
            rss = rss_mib(pid)
    finally:
        proc.stop()
    report(
        "xpud cost at 1 Hz, 64 busy devices, one telemetry read per second",
        [
            {
                "devices": 64,
                "seconds": seconds,
                "cpu_ms_per_s": round((cpu1 - cpu0) / seconds * 1e3, 1),
                "rss_mib": round(rss, 1),
            }
        ],
    )


def test_allocation_latency_against_live_allocations(short_root: Path) -> None:
    """Allocation latency must not grow with what is already held (issue 15 item 7)."""
    proc = XpudProcess(short_root, "--profile", "x1-8").start()
    rows = []
    try:
        with proc.client() as c:
            ctx = c.open_context(api.ContextRequest(pid=1, name="bench", devices=["0"]))
            live = 0
            for target in (10, 1000):
                while live < target:  # build up the live set, untimed
                    c.allocate(ctx.id, "0", 4096)
                    live += 1

                def alloc_and_free() -> None:
                    c.free(ctx.id, c.allocate(ctx.id, "0", 4096).handle)

                timed(alloc_and_free, 20)  # warm up
                samples = timed(lambda: c.allocate(ctx.id, "0", 4096), 200)
                live += 200
                rows.append(
                    {"live_allocations": target, "request": "allocate", **percentiles(samples)}
                )
    finally:
        proc.stop()
    report("xpud allocation latency vs live allocations (200 requests each, one client)", rows)


def test_engine_time_per_allocation_against_live_allocations(tmp_path: Path) -> None:
    """What one allocation costs the event loop itself, i.e. every other client's wait."""
    engine = Engine(
        node="bench",
        profile=BUILTIN["x1-8"],
        clock=SystemClock(),
        store=StateStore(tmp_path / "state.json"),
    )
    ctx = engine.open_context(api.ContextRequest(pid=1, name="bench", devices=["0"])).id
    request = api.AllocationRequest(device="0", size=4096)
    rows = []
    for target in (10, 1000):
        while sum(len(c.allocations) for c in engine.contexts.values()) < target:
            engine.allocate(ctx, request)
        samples = timed(lambda: engine.allocate(ctx, request), 200)
        rows.append({"live_allocations": target, **percentiles(samples)})
    report("xpud engine time per allocation (in-process, state on disk)", rows)


def test_bench_scope_create_and_delete(short_root: Path) -> None:
    """What scoping adds to the device plugin's Allocate: one POST /v1/scopes (xpud journals
    the scope and binds its socket) over a kept-alive connection, and a DELETE when the
    container is gone."""
    proc = XpudProcess(short_root, "--profile", "x1-8").start()
    try:
        with proc.client() as client:
            uuid = client.inventory().devices[3].uuid
            req = api.ScopeRequest(
                devices=[
                    api.ScopeDeviceRequest(id=f"{uuid}::{n}", memory_limit_bytes=1 << 30)
                    for n in range(2)
                ]
            )
            created: list[str] = []
            create = timed(lambda: created.append(client.create_scope(req).id), 300)
            delete = timed(lambda: client.delete_scope(created.pop()), 300)
    finally:
        proc.stop()
    report(
        "scopes",
        [
            {"operation": "POST /v1/scopes", **percentiles(create)},
            {"operation": "DELETE /v1/scopes/{id}", **percentiles(delete)},
        ],
    )
