"""The demo stack's operands have liveness and readiness probes, and cheap ones: an HTTP GET
or a shell `test`, never a Python process started every few seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpu_device_plugin.config import DEFAULT_PLUGIN_DIR, DEFAULT_RESOURCE, DEFAULT_XPUD_SOCKET
from openxpu_device_plugin.plugin import endpoint_for

pytestmark = pytest.mark.unit

STACK = Path(__file__).parents[2] / "demo/stack"
OPERANDS = ("openxpu-driver", "openxpu-device-plugin", "openxpu-exporter")


def containers() -> dict[str, dict[str, Any]]:
    found = {}
    for f in sorted(STACK.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc["kind"] == "DaemonSet":
                (c,) = doc["spec"]["template"]["spec"]["containers"]
                found[doc["metadata"]["name"]] = c
    return found


@pytest.mark.parametrize("name", OPERANDS)
def test_operand_has_cheap_liveness_and_readiness(name: str) -> None:
    c = containers()[name]
    for kind in ("livenessProbe", "readinessProbe"):
        probe = c[kind]
        if "exec" in probe:
            argv = probe["exec"]["command"]
            assert argv[:2] == ["sh", "-c"] and argv[2].startswith("test "), argv
        else:
            assert set(probe) & {"httpGet", "tcpSocket", "grpc"}, probe


def test_probes_check_what_each_operand_serves() -> None:
    c = containers()
    assert c["openxpu-exporter"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["openxpu-exporter"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["openxpu-driver"]["readinessProbe"]["exec"]["command"][2] == (
        f"test -S {DEFAULT_XPUD_SOCKET}"
    )
    plugin_socket = f"{DEFAULT_PLUGIN_DIR}/{endpoint_for(DEFAULT_RESOURCE)}"
    assert c["openxpu-device-plugin"]["livenessProbe"]["exec"]["command"][2] == (
        f"test -S {plugin_socket}"
    )
