"""The package's dependency floors admit only versions its committed gRPC stubs import under."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

pytestmark = pytest.mark.unit

PACKAGE = Path(__file__).parents[2] / "device-plugin"
STUBS = PACKAGE / "src/openxpu_device_plugin/kubeletapi"


def floor(name: str) -> Version:
    deps = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]["dependencies"]
    (req,) = [Requirement(d) for d in deps if Requirement(d).name == name]
    (spec,) = [s for s in req.specifier if s.operator == ">="]
    return Version(spec.version)


def test_grpcio_floor_is_what_the_stubs_demand() -> None:
    text = (STUBS / "deviceplugin_pb2_grpc.py").read_text()
    m = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", text)
    assert m, "the generated stub names no grpcio version"
    assert floor("grpcio") == Version(m.group(1))


def test_protobuf_floor_is_what_the_stubs_demand() -> None:
    text = (STUBS / "deviceplugin_pb2.py").read_text()
    m = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", text)
    assert m, "the generated stub names no protobuf version"
    assert floor("protobuf") == Version(".".join(m.groups()))
