"""Fuzz the xpud API from its own OpenAPI schema: no input may crash it or break the schema."""

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

from openxpu_runtime.clock import ManualClock
from openxpu_runtime.daemon.app import create_app
from openxpu_runtime.engine import Engine
from openxpu_runtime.profiles import BUILTIN
from openxpu_runtime.state import StateStore

pytestmark = pytest.mark.integration

_engine = Engine(
    node="fuzz",
    profile=BUILTIN["x1-2"],
    clock=ManualClock(),
    store=StateStore(Path(tempfile.mkdtemp(prefix="xpu-fuzz-")) / "state.json"),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(_engine))


# The event stream never ends by design; it has its own tests.
@schema.exclude(path="/v1/events").parametrize()
# Derandomized: CI sees the same inputs every run; raise max_examples to hunt locally.
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_api_never_fails_on_any_input(case: schemathesis.Case) -> None:
    # Excluded: Starlette answers 405 with the Allow header of the first route matching the
    # path only (GET and DELETE on /v1/contexts/{id} are two routes), a framework limit; and
    # schema-valid requests may still break rules no JSON schema can state (a limit for a
    # device not requested, a fault code not in the catalog): those must get a 4xx, which
    # the status check below and the no-crash checks still hold them to.
    response = case.call_and_validate(
        excluded_checks=[allow_header_conformance, positive_data_acceptance]
    )
    assert response.status_code < 500
