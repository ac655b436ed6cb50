"""Fuzz the xpud API from its own OpenAPI schema: no input may crash it or break the schema."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def api_schema() -> Iterator[object]:
    """Built when a test asks for it, not when the module is imported: collecting this file
    (even to deselect it, as `-m unit` does) must leave nothing behind."""
    with tempfile.TemporaryDirectory(prefix="xpu-fuzz-") as state_dir:
        engine = Engine(
            node="fuzz",
            profile=BUILTIN["x1-2"],
            clock=ManualClock(),
            store=StateStore(Path(state_dir) / "state.json"),
        )
        yield schemathesis.openapi.from_asgi("/openapi.json", create_app(engine))


schema = schemathesis.pytest.from_fixture("api_schema")


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


@pytest.mark.unit
def test_collecting_the_fuzz_tests_leaves_no_files(tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
        ],
        env={**os.environ, "TMPDIR": str(scratch)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert list(scratch.iterdir()) == []
