"""The CRD is generated from the policy models: committed copy in step, structural, described;
the operator's own validation refuses what the API server refuses."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_bad_specs import BAD_SPECS, BadSpec

from openxpu_operator.crd import CRD_FILE, crd, crd_yaml, field_reference
from openxpu_operator.policy import PolicyError, XPUClusterPolicySpec, load_policy

pytestmark = pytest.mark.unit

COMMITTED = Path(__file__).parents[2] / "operator" / "deploy" / "crds" / CRD_FILE


def test_committed_crd_matches_the_generator() -> None:
    assert COMMITTED.read_text() == crd_yaml(), (
        f"{COMMITTED} drifted from openxpu_operator.policy: regenerate it with "
        f"`uv run openxpu-operator crd > {COMMITTED.relative_to(Path.cwd())}`"
    )


def test_cli_prints_the_crd() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "openxpu_operator.cli", "crd"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert yaml.safe_load(out) == crd()


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from _nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _root() -> dict[str, Any]:
    root: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def test_schema_is_structural() -> None:
    for path, node in _nodes(_root()):
        assert "$ref" not in node and "$defs" not in node, path
        assert "title" not in node and "const" not in node, path
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node and node["anyOf"] == [
                {"type": "integer"},
                {"type": "string"},
            ], path
            continue
        assert "anyOf" not in node and "oneOf" not in node, path
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, (
            path
        )
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("additionalProperties") is not False, path
        for flag in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(flag, False), bool), path


def test_every_spec_and_status_field_is_described() -> None:
    spec = _root()["properties"]["spec"]
    status = _root()["properties"]["status"]
    missing = [
        p
        for schema, prefix in ((spec, "spec"), (status, "status"))
        for p, n in _nodes(schema, prefix)
        if not n.get("description") and not p.endswith(("[]", "{}"))
    ]
    assert missing == []


def test_status_keeps_what_kopf_writes_and_printer_columns_read_it() -> None:
    version = crd()["spec"]["versions"][0]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "State": ".status.state",
        "Operands": ".status.operandsReady",
        "XPU Nodes": ".status.nodesReady",
        "Age": ".metadata.creationTimestamp",
    }
    for path in (".status.state", ".status.operandsReady", ".status.nodesReady"):
        node = status
        for part in path.split(".")[2:]:
            node = node["properties"][part]
        assert node["type"] == "string"


def test_names_and_scope() -> None:
    c = crd()
    assert c["metadata"]["name"] == "xpuclusterpolicies.openxpu.io"
    assert c["spec"]["scope"] == "Cluster"
    assert c["spec"]["names"]["shortNames"] == ["xcp"]
    assert [v["name"] for v in c["spec"]["versions"]] == ["v1"]


def _normalize(text: str) -> str:
    """`a[0].b` and `a[name].b` (the API server's spelling) as `a.0.b` / `a.name.b`."""
    return re.sub(r"\[([^\]]*)\]", r".\1", text)


assert len(BAD_SPECS) >= 15


@pytest.mark.parametrize("bad", BAD_SPECS, ids=[b.id for b in BAD_SPECS])
def test_operator_refuses_bad_spec_naming_the_field(bad: BadSpec) -> None:
    with pytest.raises(PolicyError) as exc:
        load_policy({"spec": bad.spec})
    assert bad.field in _normalize(str(exc.value)), str(exc.value)


def test_empty_spec_gets_every_default() -> None:
    spec = load_policy({"spec": {}}).spec
    assert spec == XPUClusterPolicySpec()
    assert spec.driver.enabled and spec.driver.version == "0.1.0"
    assert spec.emulation.default_profile == "x1-2"
    assert spec.device_plugin.config.flags.resource_name == "openxpu.io/xpu"
    assert spec.exporter.refresh_seconds == 1.0
    assert spec.profiles_in_use() == ["x1-2"]


def test_docs_field_reference_matches_the_schema() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operator.md").read_text()
    begin, end = "<!-- BEGIN field reference -->\n", "<!-- END field reference -->"
    copy = doc[doc.index(begin) + len(begin) : doc.index(end)]
    assert copy == field_reference(), (
        "docs/operator.md's field reference drifted: paste openxpu_operator.crd.field_reference()"
    )
