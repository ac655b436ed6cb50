"""Benchmark: `helm install` of the chart → the default XPUClusterPolicy Ready, on the lab
with the OpenXPU image already in containerd (figures in docs/performance.md). Run under the
lab lock: `flock /tmp/openxpu-lab.lock uv run pytest -m bench tests/e2e/test_helm_bench.py -s`."""

from __future__ import annotations

import time

import pytest

from e2e.conftest import (
    COLD_START_TIMEOUT,
    LabCluster,
    install_release,
    require_no_foreign_stack,
    uninstall_release,
)

pytestmark = [pytest.mark.bench, pytest.mark.timeout(COLD_START_TIMEOUT)]
RUNS = 3


def test_bench_helm_install_to_policy_ready(lab_cluster: LabCluster) -> None:
    lab = lab_cluster
    require_no_foreign_stack(lab)
    installs, uninstalls = [], []
    for _ in range(RUNS):
        started = time.monotonic()
        release = install_release(lab)
        installs.append(time.monotonic() - started)
        started = time.monotonic()
        uninstall_release(lab, release)
        uninstalls.append(time.monotonic() - started)

    def line(figures: list[float]) -> str:
        runs = ", ".join(f"{f:.1f}s" for f in figures)
        return f"{runs} (median {sorted(figures)[len(figures) // 2]:.1f}s)"

    print(
        f"\nhelm install -> XPUClusterPolicy Ready (image cached, 1 node, x1-8): {line(installs)}"
    )
    print(f"helm uninstall (cleanup hook, operator finalizer) + namespace gone: {line(uninstalls)}")
