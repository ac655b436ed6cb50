"""Benchmark: the operator (a real `openxpu-operator run` process under its RBAC) against a
real kube-apiserver holding 100 and 1000 KWOK-simulated XPU nodes.

The KWOK controller runs against the apiserver-only envtest (no kubelet, no controller
manager), so it needs no lab and no lab lock: it keeps the fake Nodes alive (status and
heartbeats, which reach the operator as node events) as it does in the lab. Printed per node
count (each advertising 8 XPUs, so each gets a validation Job): time from the policy's
creation until every node carries openxpu.io/xpu.present and the status counts them all
(and the operator's CPU seconds until then, which the neighbours on a shared machine do not
change), the operator's RSS (now and peak), the operator's own API
requests (its `openxpu_operator_api_requests_total`) per node, and the requests a quiet
minute of KWOK heartbeats costs. Goals (issue 8): 1000 nodes < 60 s, < 300 MiB.
Figures only: nothing here asserts a timing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import needs_etcd
from operator_process import Env, environment, free_port, running, wait_until

from openxpu_lab import gobuild
from openxpu_lab.kwok import ANNOTATION, node_manifest
from openxpu_lab.progress import Progress

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800), needs_etcd]

PRESENT = "openxpu.io/xpu.present=true"
QUIET_SECONDS = 30.0
# The operator's default resync: the bench measures what a user runs.
RESYNC_SECONDS = 60.0


@contextmanager
def kwok_controller(env: Env, log: Path) -> Iterator[None]:
    """The kwok controller (built by the lab, cached) faking the kubelet of annotated nodes."""
    tool = gobuild.kwok_tool()
    gobuild.ensure(tool, Progress(quiet=True))
    port = free_port()
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [
                str(tool.bin_dir / "kwok"),
                f"--kubeconfig={env.api.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={ANNOTATION}=fake",
                "--cidr=10.89.0.0/16",
                "--node-ip=10.87.0.2",
                f"--server-address=127.0.0.1:{port}",
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            "kwok /healthz",
            lambda: _ok(f"http://127.0.0.1:{port}/healthz"),
        )
        yield
    finally:
        process.terminate()
        process.wait(20)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _rss_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM (peak) of a process, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far: its own work, whatever the neighbours do."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def _labelled(env: Env) -> int:
    r = env.http.get("/api/v1/nodes", params={"labelSelector": PRESENT})
    return len(r.json()["items"])


def _counted(env: Env) -> int:
    status = (env.policy("bench") or {}).get("status") or {}
    return int((status.get("nodes") or {}).get("total", 0))


@pytest.mark.parametrize("count", [100, 1000])
def test_operator_with_many_kwok_nodes(count: int, tmp_path: Path) -> None:
    with environment() as env, kwok_controller(env, tmp_path / "kwok.log"):
        created = time.monotonic()
        for i in range(count):
            body = node_manifest(f"kwok-node-{i}")
            # XPU nodes whose device plugin has registered: each gets its validation Job.
            for amounts in ("capacity", "allocatable"):
                body["status"][amounts]["openxpu.io/xpu"] = "8"
            assert env.http.post("/api/v1/nodes", json=body).status_code == 201
        print(f"\n{count} nodes created in {time.monotonic() - created:.1f} s")
        with running(env.kubeconfig, tmp_path, resync_seconds=RESYNC_SECONDS) as op:
            metrics_url = f"http://127.0.0.1:{op.metrics_port}/metrics"
            wait_until("operator metrics", lambda: _ok(metrics_url))
            start = time.monotonic()
            env.create_policy("bench", {"nodeSelector": {"type": "kwok"}})
            labelled_at = counted_at = 0.0
            deadline = start + 600
            while not (labelled_at and counted_at) and time.monotonic() < deadline:
                if not labelled_at and _labelled(env) == count:
                    labelled_at = time.monotonic() - start
                if not counted_at and _counted(env) == count:
                    counted_at = time.monotonic() - start
                time.sleep(0.25)
            text = httpx.get(metrics_url, timeout=10).text
            requests = _metric(text, "openxpu_operator_api_requests_total")
            passes = _metric(text, "openxpu_operator_reconciles_total")
            rss, peak = _rss_kib(op.process.pid)
            cpu = _cpu_seconds(op.process.pid)
            # A quiet spell: only KWOK's heartbeats and the resync reach the operator.
            time.sleep(QUIET_SECONDS)
            text = httpx.get(metrics_url, timeout=10).text
            quiet = _metric(text, "openxpu_operator_api_requests_total") - requests
            quiet_passes = _metric(text, "openxpu_operator_reconciles_total") - passes
            rss_quiet, peak = _rss_kib(op.process.pid)
            quiet_cpu = _cpu_seconds(op.process.pid) - cpu
            load = os.getloadavg()[0]
    figures = {
        "nodes": count,
        "all_labelled_s": round(labelled_at, 1) if labelled_at else None,
        "all_counted_in_status_s": round(counted_at, 1) if counted_at else None,
        "load_avg": round(load, 1),
        "operator_cpu_s": round(cpu, 1),
        "passes": int(passes),
        "api_requests": int(requests),
        "api_requests_per_node": round(requests / count, 2),
        "rss_mib": round(rss / 1024, 1),
        "rss_after_quiet_mib": round(rss_quiet / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        f"requests_in_quiet_{QUIET_SECONDS:.0f}s": int(quiet),
        f"passes_in_quiet_{QUIET_SECONDS:.0f}s": int(quiet_passes),
        f"cpu_in_quiet_{QUIET_SECONDS:.0f}s": round(quiet_cpu, 2),
    }
    print("| " + " | ".join(figures) + " |")
    print("| " + " | ".join(str(v) for v in figures.values()) + " |")
    print(json.dumps(figures))
