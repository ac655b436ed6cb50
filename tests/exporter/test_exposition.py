"""The fast text encoder writes exactly what prometheus-client's generate_latest writes, but
for the DCGM names' two dcgm-exporter shapes (exposition.py's docstring)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest
from prometheus_client.utils import floatToGoString

from openxpu_exporter.attribution import PodRef
from openxpu_exporter.collector import XpuCollector
from openxpu_exporter.exposition import TextEncoder, go_float, serves_text
from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

from .prometheus import PROMETHEUS_ACCEPT

# The shape Prometheus 3.x sends (scrape/scrape.go acceptHeader with its default protocols).
PROMETHEUS_3_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.unit
@pytest.mark.parametrize(
    "value", [0.0, -0.0, 1.0, 0.1, 1e-9, 123456.0, 1234567.0, 2.5e18, -3e12, float("inf"),
              float("-inf"), float("nan"), 68719476736.0]
)  # fmt: skip
def test_go_float(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("accept", "text"),
    [
        (PROMETHEUS_ACCEPT, True),  # prefers OpenMetrics, takes 0.0.4: the fast encoder
        (PROMETHEUS_3_ACCEPT, True),
        (None, True),
        ("", True),
        ("*/*", True),
        ("text/plain", True),
        ("text/plain; version=0.0.4", True),
        ("image/png", True),  # nothing we speak: the default format, as prometheus-client
        ("application/openmetrics-text; version=1.0.0", False),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0", False),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=1.0.0", False),
        ("application/openmetrics-text;version=1.0.0,*/*;q=bad", False),
    ],
)
def test_serves_text_whenever_the_client_takes_it(accept: str | None, text: bool) -> None:
    assert serves_text(accept) is text


def as_prometheus_client_writes(body: bytes) -> bytes:
    """The fast encoder's text with its two deliberate differences undone: DCGM int values
    as prometheus-client prints every value (`67.0`), and the DCGM counters' TYPE as the
    `untyped` prometheus-client's encoders get for them (collector.Dense.metric)."""
    lines = []
    for line in body.decode().splitlines(keepends=True):
        if line.startswith("DCGM_"):
            series, _, value = line[:-1].rpartition(" ")
            line = f"{series} {floatToGoString(float(value))}\n"
        elif line.startswith("# TYPE DCGM_") and line.endswith(" counter\n"):
            line = line.removesuffix("counter\n") + "untyped\n"
        lines.append(line)
    return "".join(lines).encode()


@pytest.mark.integration
async def test_same_bytes_as_generate_latest(manual_xpud: XpudProcess, make_exporter: Any) -> None:
    exporter = await make_exporter(
        xpud_socket=manual_xpud.socket, pod_attribution=False, refresh_interval=0,
        dcgm_compat=True,
    )  # fmt: skip
    with manual_xpud.client() as c:
        uuids = [d.uuid for d in c.telemetry().devices]
        c.inject_fault(api.FaultRequest(device="0", code=48))
        ctx = c.open_context(api.ContextRequest(pid=7, name='od"d\\name', devices=["1"]))
        c.allocate(ctx.id, "1", 4096)
    await exporter.refresh_snapshot()
    exporter.state.attribution = {
        uuids[1]: (PodRef('we"ird\\pod\nname', "ns", "c"), PodRef("p2", "ns", "c")),
    }
    exporter.state.attribution_version += 1
    registry = CollectorRegistry()
    collector = XpuCollector(exporter.config, exporter.state)
    registry.register(collector)
    h = Histogram("h_seconds", "a histogram\nwith \\ help", registry=registry)
    h.observe(0.3)
    zero = Gauge("negative_zero", "prints as -0.0, though it equals 0.0", registry=registry)
    zero.set(-0.0)
    collectors = (collector, h, zero)  # the registry's, in its order
    encoder = TextEncoder()

    def steady(body: bytes) -> bytes:  # the snapshot's age moves between the two calls
        return b"".join(
            line
            for line in body.splitlines(keepends=True)
            if not line.startswith(b"openxpu_exporter_snapshot_age_seconds{")
        )

    for _ in range(3):  # cold, then cached label strings
        fast = encoder.encode(collectors)
        # The differences are there (and undone below), not the same bytes by accident.
        assert b"\n# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION counter\n" in fast
        assert re.search(rb"\nDCGM_FI_DEV_GPU_TEMP\{[^\n]*\} \d+\n", fast)
        assert steady(as_prometheus_client_writes(fast)) == steady(generate_latest(registry))
    # A changed attribution renders the new labels, not stale cached strings.
    exporter.state.attribution = {uuids[1]: (PodRef("other", "ns", "c"),)}
    exporter.state.attribution_version += 1
    fast = encoder.encode(collectors)
    assert steady(as_prometheus_client_writes(fast)) == steady(generate_latest(registry))
    assert b'pod="other"' in fast and b"p2" not in fast
