"""The XPUClusterPolicy CRD, generated from the pydantic models in `openxpu_operator.policy`.

The API server wants a *structural* schema: every node typed, no `$ref`, no `anyOf` with
null, int-or-string spelled `x-kubernetes-int-or-string`. Pydantic's JSON Schema is turned
into that here; nested sections default to `{}` so the server fills in their own defaults
and `spec: {}` comes back complete.

The committed copy lives at operator/deploy/crds/ (the chart reuses it); a unit test fails
when it drifts from this generator (`openxpu-operator crd > operator/deploy/crds/...`).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from openxpu_operator.policy import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    XPUClusterPolicySpec,
    XPUClusterPolicyStatus,
)

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = f"{CRD_NAME}.yaml"

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "State",
        "type": "string",
        "jsonPath": ".status.state",
        "description": "ready, notReady or ignored",
    },
    {
        "name": "Operands",
        "type": "string",
        "jsonPath": ".status.operandsReady",
        "description": "Ready operands / enabled operands",
    },
    {
        "name": "XPU Nodes",
        "type": "string",
        "jsonPath": ".status.nodesReady",
        "description": "Ready XPU nodes / XPU nodes",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

# JSON Schema keywords the API server does not take, or that only name things.
_DROP = ("title", "$defs", "discriminator")


class _DefaultFactories(GenerateJsonSchema):
    """Give `default_factory` fields a default the API server can apply: `{}` for a nested
    section (its own fields carry their defaults), the factory's value otherwise."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        factory = schema.get("default_factory")
        if factory is None:
            return super().default_schema(schema)
        inner = self.generate_inner(schema["schema"])
        value = factory()  # type: ignore[call-arg]
        default: Any = {} if isinstance(value, BaseModel) else value
        return {**inner, "default": self.encode_default(default)}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s, drop nulls from `anyOf`, `const` to `enum`: a structural schema."""
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        # The field's own keywords (description, default) win over the definition's.
        node = {**target, **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a union the API server cannot express: {options}")
        node = {**options[0], **node}
        if node.get("default", ...) is None:
            del node["default"]
        return _resolve(node, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        # JSON Schema 2020 writes `exclusiveMinimum: 0`; OpenAPI 3.0 (Kubernetes) a flag.
        if not isinstance(node.get(bound, True), bool):
            node[limit], node[bound] = node[bound], True
    for key in _DROP:
        node.pop(key, None)
    if isinstance(node.get("additionalProperties"), bool):
        # extra="forbid": the API server prunes unknown fields (and refuses them with
        # fieldValidation=Strict); extra="allow": x-kubernetes-preserve-unknown-fields says
        # it. A boolean beside `properties` is not structural.
        del node["additionalProperties"]
    out: dict[str, Any] = {}
    for key in sorted(node, key=_key_order):
        value = node[key]
        if key == "properties":
            out[key] = {k: _resolve(v, defs) for k, v in value.items()}
        else:
            out[key] = _resolve(value, defs)
    if (
        out.get("type") == "object"
        and "properties" not in out
        and "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


# Readable YAML: what a field is first, its children and rules last.
_ORDER = ("type", "description", "default", "enum", "required")
_LAST = ("items", "additionalProperties", "properties", "x-kubernetes-validations")


def _key_order(key: str) -> tuple[int, int, str]:
    if key in _ORDER:
        return (0, _ORDER.index(key), key)
    if key in _LAST:
        return (2, _LAST.index(key), key)
    return (1, 0, key)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, schema_generator=_DefaultFactories)
    resolved: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    return resolved


def crd() -> dict[str, Any]:
    spec = openapi_schema(XPUClusterPolicySpec)
    status = openapi_schema(XPUClusterPolicyStatus)
    spec["default"] = {}
    root = {
        "type": "object",
        "description": (XPUClusterPolicySpec.__doc__ or "").strip().split("\n")[0],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    root["description"] = (
        "XPUClusterPolicy describes the OpenXPU stack the operator deploys on XPU nodes: the "
        "driver, CDI, validation, device plugin, feature discovery and exporter."
    )
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "openxpu"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["openxpu"],
            },
            "scope": "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd_yaml() -> str:
    header = (
        "# Generated by `openxpu-operator crd` from openxpu_operator.policy; do not edit.\n"
        "# A unit test (tests/operator/test_operator_crd.py) fails when this file drifts.\n"
    )
    return header + yaml.safe_dump(crd(), sort_keys=False, width=100)


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(node.get("type", "object"))
    if kind == "array":
        return f"list of {_type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type_of(node['additionalProperties'])}"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return kind


def _reference_rows(node: dict[str, Any], path: str) -> list[str]:
    rows = []
    for name, child in node.get("properties", {}).items():
        here = f"{path}.{name}"
        default = child.get("default")
        shown = "" if default is None or default == {} else f"`{_compact(default)}`"
        description = str(child.get("description", "")).replace("\n", " ").replace("|", "\\|")
        rows.append(f"| `{here}` | {_type_of(child)} | {shown} | {description} |")
        inner = child
        if child.get("type") == "array":
            inner = child.get("items", {})
            here += "[]"
        elif isinstance(child.get("additionalProperties"), dict):
            inner = child["additionalProperties"]
            here += ".<name>"
        rows.extend(_reference_rows(inner, here))
    return rows


def _compact(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def _rules(node: dict[str, Any], path: str) -> list[str]:
    rows = [
        f"| `{path}{r.get('fieldPath', '')}` | {r['message']} |"
        for r in node.get("x-kubernetes-validations", [])
    ]
    for name, child in node.get("properties", {}).items():
        rows.extend(_rules(child, f"{path}.{name}"))
    if isinstance(node.get("items"), dict):
        rows.extend(_rules(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        rows.extend(_rules(node["additionalProperties"], f"{path}.<name>"))
    return rows


def field_reference() -> str:
    """The spec's fields as a Markdown table (docs/operator.md keeps a copy, checked by a
    test), generated from the same schema as the CRD."""
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    head = "| field | type | default | description |\n| --- | --- | --- | --- |\n"
    rules = "\n\nCEL rules (`x-kubernetes-validations`), checked at admission:\n\n"
    rules += "| field | message when refused |\n| --- | --- |\n"
    return (
        head
        + "\n".join(_reference_rows(spec, "spec"))
        + rules
        + "\n".join(_rules(spec, "spec"))
        + "\n"
    )
