"""Benchmarks of libnvidia-ml.so.1 (run with `make bench`): the cost of an NVML query as
pynvml callers pay it, and of a 1 Hz monitoring loop. They print figures, assert nothing
timed."""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pynvml
import pytest

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

pytestmark = pytest.mark.bench
TICKS = os.sysconf("SC_CLK_TCK")

QUERIES: dict[str, Callable[[Any], object]] = {
    "memory": pynvml.nvmlDeviceGetMemoryInfo,
    "utilization": pynvml.nvmlDeviceGetUtilizationRates,
    "temperature": lambda h: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
    "power": pynvml.nvmlDeviceGetPowerUsage,
    "clock_sm": lambda h: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
    "energy": pynvml.nvmlDeviceGetTotalEnergyConsumption,
    "processes": pynvml.nvmlDeviceGetComputeRunningProcesses,
    "uuid": pynvml.nvmlDeviceGetUUID,
}


def micros(samples: list[float]) -> dict[str, float]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "p50_us": round(q[49] * 1e6, 1),
        "p99_us": round(q[98] * 1e6, 1),
        "max_us": round(max(samples) * 1e6, 1),
    }


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def table(name: str, rows: list[dict[str, object]]) -> None:
    print(f"\n## {name}\n| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]))
    for row in rows:
        print("| " + " | ".join(str(v) for v in row.values()) + " |")
    print(json.dumps({name: rows}))


@contextmanager
def nvml_on(root: Path, monkeypatch: pytest.MonkeyPatch, count: int) -> Iterator[XpudProcess]:
    proc = XpudProcess(root, "--profile", "x2-64", "--count", str(count)).start()
    try:
        with proc.client() as client:
            # Every device holds a process, so the process query has a list to copy.
            devices = [str(i) for i in range(count)]
            ctx = client.open_context(
                api.ContextRequest(pid=os.getpid(), name="bench", devices=devices)
            )
            for d in devices:
                client.allocate(ctx.id, d, 1 << 30)
        for name in ("XPU_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("XPUD_SOCKET", str(proc.socket))
        pynvml.nvmlInit()
        try:
            yield proc
        finally:
            pynvml.nvmlShutdown()
    finally:
        proc.stop()


@pytest.mark.parametrize("count", [8, 64])
def test_query_latency(
    nvml_lib: ctypes.CDLL, short_root: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    with nvml_on(short_root, monkeypatch, count):
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        samples: dict[str, list[float]] = {name: [] for name in QUERIES}
        rounds = max(2, 2400 // count)
        for _ in range(rounds):
            for h in handles:
                for name, query in QUERIES.items():
                    start = time.perf_counter()
                    query(h)
                    samples[name].append(time.perf_counter() - start)
        # The library alone, without pynvml's Python around it.
        memory = (ctypes.c_ulonglong * 3)()
        raw = []
        for _ in range(rounds):
            for h in handles:
                start = time.perf_counter()
                nvml_lib.nvmlDeviceGetMemoryInfo(h, memory)
                raw.append(time.perf_counter() - start)
        # The call that finds the snapshot expired pays the round trip to xpud.
        refresh = []
        for _ in range(100):
            time.sleep(0.11)
            start = time.perf_counter()
            pynvml.nvmlDeviceGetMemoryInfo(handles[0])
            refresh.append(time.perf_counter() - start)
    rows: list[dict[str, object]] = [
        {"devices": count, "query": name, "calls": len(s), **micros(s)}
        for name, s in samples.items()
    ]
    everything = [x for s in samples.values() for x in s]
    rows.append(
        {
            "devices": count,
            "query": "all of the above",
            "calls": len(everything),
            **micros(everything),
        }
    )
    rows.append(
        {"devices": count, "query": "memory, ctypes (no pynvml)", "calls": len(raw), **micros(raw)}
    )
    rows.append(
        {"devices": count, "query": "snapshot refresh (expired)", "calls": 100, **micros(refresh)}
    )
    table(f"nvml query latency, {count} devices", rows)


@pytest.mark.parametrize("count", [8, 64])
def test_one_hz_monitoring_loop(
    nvml_lib: ctypes.CDLL, short_root: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    seconds = 10
    with nvml_on(short_root, monkeypatch, count) as proc:
        assert proc.proc is not None
        xpud_pid = proc.proc.pid
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        # xpud's own cost with nobody asking, to separate what the loop adds.
        idle_start = process_cpu(xpud_pid)
        time.sleep(seconds)
        xpud_idle = process_cpu(xpud_pid) - idle_start

        cpu_start, xpud_start, wall_start = (
            time.process_time(),
            process_cpu(xpud_pid),
            time.monotonic(),
        )
        calls: list[float] = []
        for tick in range(seconds):
            for h in handles:
                for query in QUERIES.values():
                    start = time.perf_counter()
                    query(h)
                    calls.append(time.perf_counter() - start)
            time.sleep(max(0.0, wall_start + tick + 1 - time.monotonic()))
        wall = time.monotonic() - wall_start
        client_cpu = time.process_time() - cpu_start
        xpud_cpu = process_cpu(xpud_pid) - xpud_start
    table(
        f"nvml 1 Hz monitoring loop, {count} devices",
        [
            {
                "devices": count,
                "queries_per_tick": count * len(QUERIES),
                "seconds": round(wall, 1),
                "client_pct_core": round(100 * client_cpu / wall, 3),
                "xpud_added_pct_core": round(100 * (xpud_cpu - xpud_idle) / wall, 3),
                "xpud_idle_pct_core": round(100 * xpud_idle / seconds, 3),
                # Without prefetching, each tick's first call would pay the round trip to xpud.
                **micros(calls),
            }
        ],
    )
