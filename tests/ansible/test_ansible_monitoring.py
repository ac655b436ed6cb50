"""The validate role's monitoring check (openxpu_validate_monitoring) against a real
Prometheus (Debian's) scraping a real exporter reading a real xpud. The exporter "pods" are
given to the role's tasks directly (no cluster here): the lab e2e covers reading them."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from exporter.prometheus import Prometheus
from exporter.support import ExporterProcess, running_exporter

from openxpu_runtime.testing import XpudProcess

from .support import playbook

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter(xpud: XpudProcess, short_root: Path) -> Iterator[ExporterProcess]:
    with running_exporter(
        "--xpud-socket", str(xpud.socket), "--no-pod-attribution", log=short_root / "exp.log"
    ) as proc:
        yield proc


@pytest.fixture
def prometheus(exporter: ExporterProcess, short_root: Path) -> Iterator[Prometheus]:
    job = {
        "job_name": "openxpu-exporter",
        "static_configs": [{"targets": [exporter.url.removeprefix("http://")]}],
    }
    prom = Prometheus(short_root / "prometheus", [job], {"groups": []}).start()
    yield prom
    prom.stop()


def check_targets(
    tmp_path: Path, prometheus: Prometheus, port: int, pod_ips: list[str]
) -> tuple[int, str]:
    """Run the role's monitoring tasks for exporter pods at `pod_ips` on `port`."""
    pods = [{"status": {"podIP": ip}, "spec": {"nodeName": f"node-{ip}"}} for ip in pod_ips]
    play = [
        {
            "name": "Check Prometheus's targets",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"__openxpu_validate_exporters": {"resources": pods}},
            "tasks": [
                {
                    "name": "The role's monitoring check",
                    "ansible.builtin.include_role": {
                        "name": "openxpu_validate",
                        "tasks_from": "monitoring",
                    },
                }
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    variables = {
        "openxpu_validate_prometheus_url": prometheus.url + "/",
        "openxpu_validate_exporter_port": port,
        "openxpu_validate_timeout": 8,
        "openxpu_validate_poll_interval": 1,
    }
    inv = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": host}}}))
    out = playbook(
        str(tmp_path / "play.yml"), inv, "-e", json.dumps(variables), home=tmp_path / "home"
    )
    return out.returncode, out.stdout + out.stderr


def test_prometheus_scraping_every_exporter_passes(
    tmp_path: Path, prometheus: Prometheus, exporter: ExporterProcess
) -> None:
    rc, text = check_targets(tmp_path, prometheus, exporter.port, ["127.0.0.1"])
    assert rc == 0, text[-4000:]


def test_an_exporter_prometheus_does_not_scrape_is_named(
    tmp_path: Path, prometheus: Prometheus, exporter: ExporterProcess
) -> None:
    rc, text = check_targets(tmp_path, prometheus, exporter.port, ["127.0.0.1", "127.0.0.2"])
    assert rc == 2, text[-4000:]
    assert (
        f"has no healthy target for the exporter(s) 127.0.0.2:{exporter.port} after 8s" in text
    ), text[-4000:]
    assert f"127.0.0.1:{exporter.port}," not in text
