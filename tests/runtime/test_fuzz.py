"""Fuzz the xpud APIs from their own OpenAPI schemas: no input may crash them or break the
schema. Both the admin API and the workload API of one scope."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    positive_data_acceptance,
)

from openxpu_runtime import api
from openxpu_runtime.clock import ManualClock
from openxpu_runtime.daemon.app import ScopeBound, create_app, create_workload_app
from openxpu_runtime.engine import Engine
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.state import StateStore

pytestmark = pytest.mark.integration


def engine() -> Engine:
    return Engine(
        node="fuzz",
        profile=BUILTIN["x1-2"],
        clock=ManualClock(),
        store=StateStore(Path(tempfile.mkdtemp(prefix="xpu-fuzz-")) / "state.json"),
    )


schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(engine()))
# One container's view of a node of its own: a shared replica of device 1, limited to 1 GiB.
_node = engine()
_scope = _node.create_scope(
    api.ScopeRequest(devices=[api.ScopeDeviceRequest(id="1::0", memory_limit_bytes=1 << 30)])
)
_workload = ScopeBound(create_workload_app(_node, create_app(_node)), _scope.id)
workload_schema = schemathesis.openapi.from_asgi("/openapi.json", _workload)


# Derandomized: CI sees the same inputs every run; raise max_examples to hunt locally.
FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


# The event stream never ends by design; it has its own tests.
@schema.exclude(path="/v1/events").parametrize()
@FUZZ
def test_api_never_fails_on_any_input(case: schemathesis.Case) -> None:
    check(case)


@workload_schema.exclude(path="/v1/events").parametrize()
@FUZZ
def test_the_workload_api_never_fails_and_never_leaves_its_scope(case: schemathesis.Case) -> None:
    check(case)
    # Whatever it was sent, the scope still sees one device, and the node kept its health.
    assert [d.uuid for d in _node.inventory(_scope).devices] == [_node.devices[1].uuid]
    assert all(d.health.value == "Healthy" for d in _node.devices)
    assert _node.scopes.keys() == {_scope.id}
    assert sum(c.used_on(1) for c in _node.contexts.values()) <= 1 << 30


def check(case: schemathesis.Case) -> None:
    # Excluded: Starlette answers 405 with the Allow header of the first route matching the
    # path only (GET and DELETE on /v1/contexts/{id} are two routes), a framework limit; and
    # schema-valid requests may still break rules no JSON schema can state (a limit for a
    # device not requested, a fault code not in the catalog): those must get a 4xx, which
    # the status check below and the no-crash checks still hold them to.
    response = case.call_and_validate(
        excluded_checks=[allow_header_conformance, positive_data_acceptance]
    )
    assert response.status_code < 500
