"""Scrape latency, CPU per scrape and RSS of the exporter at 8, 64 and 256 devices.

    uv run pytest -m bench tests/exporter/test_bench.py -s -p no:cacheprovider

A real xpud (`--count N`), a PodResources server attributing 100 pods, and the exporter as
its own process, scraped back to back over HTTP keep-alive with the Accept header Prometheus
sends. Both read modes are measured: a background snapshot (refresh_interval 1 s, the
default) and a fresh read of xpud on every scrape (refresh_interval 0); and the default with
DCGM names added. Then a real Prometheus scrapes the 64-device node and its own
`scrape_duration_seconds` is read back.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openxpu_runtime.testing import XpudProcess

from .prometheus import PROMETHEUS_ACCEPT, Prometheus
from .support import ExporterProcess, FakeKubelet, parse, pod, running_exporter, select

pytestmark = pytest.mark.bench

PODS = 100
SCRAPES = int(os.environ.get("OPENXPU_BENCH_SCRAPES", "300"))
PROMETHEUS_SECONDS = int(os.environ.get("OPENXPU_BENCH_PROMETHEUS_SECONDS", "60"))
PROMETHEUS_INTERVAL = "250ms"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def attribute_pods(kubelet: FakeKubelet, uuids: list[str]) -> None:
    """100 pods: whole devices while there are enough, else shared replicas `<uuid>::<n>`."""
    shared = len(uuids) < PODS
    kubelet.pods = [
        pod(
            f"job-{i}",
            f"team-{i % 7}",
            {"main": [f"{uuids[i % len(uuids)]}::{i // len(uuids)}" if shared else uuids[i]]},
            "openxpu.io/xpu.shared" if shared else "openxpu.io/xpu",
        )
        for i in range(PODS)
    ]


def exporter_of(
    xpud: XpudProcess, kubelet: FakeKubelet, short_root: Path, *args: str
) -> contextlib.AbstractContextManager[ExporterProcess]:
    """The exporter as its own process, reading `xpud`, with 100 pods attributed."""
    with xpud.client() as c:
        attribute_pods(kubelet, [d.uuid for d in c.telemetry().devices])
    return running_exporter(
        "--xpud-socket", str(xpud.socket), "--kubelet-socket", str(kubelet.socket_path), *args,
        log=short_root / "exporter.log",
    )  # fmt: skip


@pytest.fixture(params=[8, 64, 256], ids=lambda n: f"{n}dev")
def node(request: pytest.FixtureRequest, short_root: Path) -> Iterator[tuple[XpudProcess, int]]:
    count: int = request.param
    proc = XpudProcess(short_root / "host", "--profile", "x1-8", "--count", str(count)).start()
    yield proc, count
    proc.stop()


@pytest.mark.parametrize(
    ("refresh", "dcgm"),
    [("1", False), ("0", False), ("1", True)],
    ids=["cached", "per-scrape", "cached+dcgm"],
)
def test_scrape_cost(
    node: tuple[XpudProcess, int], kubelet: FakeKubelet, short_root: Path, refresh: str, dcgm: bool
) -> None:
    xpud, count = node
    with exporter_of(
        xpud, kubelet, short_root,
        "--refresh-interval", refresh, "--dcgm-compat" if dcgm else "--no-dcgm-compat",
    ) as exporter, httpx.Client(
        base_url=exporter.url, timeout=10.0, headers={"accept": PROMETHEUS_ACCEPT}
    ) as http:  # fmt: skip
        assert exporter.proc is not None
        pid = exporter.proc.pid
        first = http.get("/metrics")
        content_type = first.headers["content-type"]
        body = first.text
        series = parse(body)
        held = {
            s.labels["uuid"] for s in select(series, "openxpu_device_info") if "pod" in s.labels
        }
        assert len(held) == min(count, PODS)
        assert len({s.labels["pod"] for s in select(series, "openxpu_device_info")
                    if "pod" in s.labels}) == PODS  # fmt: skip
        for _ in range(20):  # warm up
            http.get("/metrics")
        latencies = []
        cpu0, wall0 = cpu_seconds(pid), time.perf_counter()
        for _ in range(SCRAPES):
            started = time.perf_counter()
            r = http.get("/metrics")
            latencies.append(time.perf_counter() - started)
            assert r.status_code == 200
        cpu = cpu_seconds(pid) - cpu0
        wall = time.perf_counter() - wall0
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
        mode = ("cached" if refresh == "1" else "per-scrape") + ("+dcgm" if dcgm else "")
        print(
            f"\nBENCH exporter devices={count} pods={PODS} mode={mode} samples={len(series)} "
            f"content_type={content_type.split(';')[0]} "
            f"bytes={len(body)} scrapes={SCRAPES} p50_ms={p50:.2f} p99_ms={p99:.2f} "
            f"cpu_ms_per_scrape={cpu / SCRAPES * 1000:.2f} rss_mib={rss_mib(pid):.1f} "
            f"wall_s={wall:.1f} loadavg={os.getloadavg()[0]:.1f}"
        )


@pytest.mark.parametrize("node", [64], indirect=True, ids=["64dev"])
def test_scrape_duration_seen_by_prometheus(
    node: tuple[XpudProcess, int], kubelet: FakeKubelet, short_root: Path
) -> None:
    """The goal's case (64 devices, 100 pods, DCGM names on) as Prometheus itself times it."""
    xpud, count = node
    with exporter_of(xpud, kubelet, short_root, "--dcgm-compat") as exporter:
        job = {
            "job_name": "bench",
            "scrape_interval": PROMETHEUS_INTERVAL,
            "scrape_timeout": PROMETHEUS_INTERVAL,
            "static_configs": [{"targets": [exporter.url.removeprefix("http://")]}],
        }
        prom = Prometheus(short_root / "prometheus", [job], {"groups": []}).start()
        try:
            time.sleep(PROMETHEUS_SECONDS)
            window = f"[{PROMETHEUS_SECONDS}s]"

            def scalar(expr: str) -> float:
                return float(prom.query(expr)[0]["value"][1])

            durations = f"scrape_duration_seconds{window}"
            scrapes = scalar(f"count_over_time({durations})")
            p50, p99, top = (
                scalar(expr) * 1000
                for expr in (
                    f"quantile_over_time(0.5, {durations})",
                    f"quantile_over_time(0.99, {durations})",
                    f"max_over_time({durations})",
                )
            )
            samples = scalar(f"max_over_time(scrape_samples_scraped{window})")
            # Scrapes slower than the interval time out (up 0): a figure, not a failure here.
            failed = scalar(f"count_over_time(up{window}) - sum_over_time(up{window})")
        finally:
            prom.stop()
    print(
        f"\nBENCH prometheus devices={count} pods={PODS} mode=cached+dcgm samples={samples:.0f} "
        f"scrapes={scrapes:.0f} failed={failed:.0f} interval={PROMETHEUS_INTERVAL} "
        f"scrape_duration_p50_ms={p50:.2f} p99_ms={p99:.2f} max_ms={top:.2f} "
        f"loadavg={os.getloadavg()[0]:.1f}"
    )
