"""Generate the chart's derived files, so they cannot drift from their sources:

- helm/openxpu/values.schema.json: the chart's own values (written here) plus every policy
  section, generated from the operator's pydantic models (openxpu_operator.policy);
- helm/openxpu/crds/, helm/openxpu/files/: the operator's CRD and the exporter's dashboard
  and alert rules, byte for byte;
- helm/openxpu/images.txt: every image `helm template` renders with the default values
  (the operator's operand images included: they sit in the policy's spec).

    uv run python -m tests.helm.chart_gen          # write
    uv run python -m tests.helm.chart_gen --check  # exit 1 naming each stale file

tests/helm/test_helm_chart.py runs the check.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from openxpu_exporter import render as exporter_render
from openxpu_lab import gobuild, paths
from openxpu_lab.progress import Progress
from openxpu_operator.crd import CRD_FILE, crd_yaml
from openxpu_operator.policy import XPUClusterPolicySpec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "openxpu"
SCHEMA_FILE = CHART / "values.schema.json"
IMAGES_FILE = CHART / "images.txt"

# Sections of the policy that are top-level values, mapped 1:1 into the policy's spec.
# `operator` is shared: its policy fields go into spec.operator, the rest shape the Deployment.
POLICY_SECTIONS = (
    "daemonsets",
    "driver",
    "cdi",
    "devicePlugin",
    "featureDiscovery",
    "exporter",
    "validator",
    "emulation",
    "nodeSelector",
)

_STRING = {"type": "string"}
_STRING_MAP = {"type": "object", "additionalProperties": _STRING}
_PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
_PULL_POLICY = {"type": "string", "enum": ["Always", "IfNotPresent", "Never"]}
# Kubernetes objects the chart passes through (resources, affinity, tolerations): their
# own schema is the API server's business.
_OPEN_OBJECT = {"type": "object"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`--reuse-values` from an older release may feed null for a section: allow it."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return schema


def _obj(props: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if description:
        out = {"description": description, **out}
    return out


OPERATOR_DEPLOYMENT: dict[str, Any] = {
    "replicas": {
        "type": "integer",
        "minimum": 0,
        "description": "Operator replicas (a Lease keeps one active).",
    },
    "metricsPort": {**_PORT, "description": "Port of the operator's /metrics."},
    "livenessPort": {**_PORT, "description": "Port of the operator's /healthz (liveness probe)."},
    "resyncSeconds": {"type": "number", "exclusiveMinimum": 0, "description": "Periodic resync."},
    "cleanupTimeoutSeconds": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "How long a policy deletion waits for the per-node cleanup pods.",
    },
    "verbose": {"type": "boolean", "description": "Debug logging."},
    "podLabels": {**_STRING_MAP, "description": "Extra labels of the operator pod."},
    "podAnnotations": {**_STRING_MAP, "description": "Extra annotations of the operator pod."},
    "resources": {**_OPEN_OBJECT, "description": "Operator container resources."},
    "nodeSelector": {**_STRING_MAP, "description": "Where the operator and hook pods run."},
    "tolerations": {
        "type": "array",
        "items": _OPEN_OBJECT,
        "description": "Tolerations of the operator and hook pods.",
    },
    "affinity": {**_OPEN_OBJECT, "description": "Affinity of the operator pod."},
    "priorityClassName": {**_STRING, "description": "PriorityClass of the operator pod."},
}

CHART_VALUES: dict[str, Any] = {
    "nameOverride": {**_STRING, "description": "Replaces the chart name in object names."},
    "fullnameOverride": {**_STRING, "description": "Replaces <release>-<chart> in object names."},
    # Open: as a subchart, `global` also carries the parent's and its siblings' keys.
    "global": {
        **_obj(
            {
                "imageRegistry": {
                    **_STRING,
                    "description": "Registry prefix of every image (a mirror).",
                },
                "imagePullSecrets": {
                    "type": "array",
                    "items": _STRING,
                    "description": "Secret names.",
                },
            }
        ),
        "additionalProperties": True,
    },
    "images": _obj(
        {
            "openxpu": _obj(
                {
                    "registry": {**_STRING, "description": "Registry (global.imageRegistry wins)."},
                    "repository": {**_STRING, "minLength": 1, "description": "Repository."},
                    "tag": {**_STRING, "description": "Tag; empty: the chart's appVersion."},
                    "digest": {
                        **_STRING,
                        "pattern": "^(sha256:[0-9a-f]{64})?$",
                        "description": "sha256:... pins the image (repository:tag@digest).",
                    },
                    "pullPolicy": {**_PULL_POLICY, "description": "Pull policy of every pod."},
                },
                "The OpenXPU image (operator, operands, hooks, test pod).",
            )
        }
    ),
    "crds": _obj(
        {
            "upgrade": {"type": "boolean", "description": "A pre-upgrade hook applies crds/."},
            "deleteOnUninstall": {
                "type": "boolean",
                "description": "helm uninstall deletes the CRD.",
            },
        }
    ),
    "clusterPolicy": _obj(
        {
            "create": {"type": "boolean", "description": "Create the default XPUClusterPolicy."},
            "name": {
                **_STRING,
                "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                "description": "Name of the default policy.",
            },
        }
    ),
    "grafanaDashboard": _obj(
        {
            "enabled": {"type": "boolean", "description": "Create the dashboard ConfigMap."},
            "labels": {**_STRING_MAP, "description": "Labels Grafana's sidecar selects."},
            "annotations": {**_STRING_MAP, "description": "E.g. the sidecar's folder."},
        }
    ),
    "tests": _obj(
        {
            "resource": {
                **_STRING,
                "minLength": 1,
                "description": "Extended resource the test pod requests.",
            },
            "command": {
                "type": "array",
                "minItems": 1,
                "items": _STRING,
                "description": "Workload the test pod runs on the XPU.",
            },
        }
    ),
}

_DROP_KEYS = ("title",)
# A CEL rule that only matches a regular expression is a JSON Schema pattern too.
_CEL_MATCH = re.compile(r"^self\.matches\(r'([^']*)'\)$")


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Pydantic's JSON Schema without `$ref`s and Kubernetes-only keywords: the schema
    Helm checks values against, self-contained."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if ref is not None:
        target = defs[ref.rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    out: dict[str, Any] = {}
    for rule in node.get("x-kubernetes-validations", []):
        match = _CEL_MATCH.match(rule["rule"])
        if match and "pattern" not in node:
            out["pattern"] = match.group(1)
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs" or key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {k: _inline(v, defs) for k, v in value.items()}
        else:
            out[key] = _inline(value, defs)
    return out


def policy_sections() -> dict[str, Any]:
    raw = XPUClusterPolicySpec.model_json_schema(by_alias=True)
    spec: dict[str, Any] = _inline(raw, raw.get("$defs", {}))
    props: dict[str, Any] = spec["properties"]
    return {name: props[name] for name in POLICY_SECTIONS} | {"operator": props["operator"]}


def values_schema() -> dict[str, Any]:
    sections = policy_sections()
    operator = sections.pop("operator")
    clash = set(operator["properties"]) & set(OPERATOR_DEPLOYMENT)
    if clash:
        raise ValueError(f"operator values both in the policy and the Deployment: {clash}")
    operator = {
        **operator,
        "description": "The operator Deployment; defaultRuntime, labels and annotations go "
        "into the policy's spec.operator.",
        "properties": {**operator["properties"], **OPERATOR_DEPLOYMENT},
    }
    props = {**CHART_VALUES, "operator": operator, **sections}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Values of the openxpu chart (policy sections generated from "
        "openxpu_operator.policy by tests/helm/chart_gen.py; do not edit)",
        "type": "object",
        "additionalProperties": False,
        "properties": {k: _nullable(v) for k, v in props.items()},
    }


def schema_json() -> str:
    return json.dumps(values_schema(), indent=2) + "\n"


DOCS_FILE = ROOT / "docs" / "install.md"
TABLE_BEGIN = "<!-- values-table:begin (generated by tests/helm/chart_gen.py) -->\n"
TABLE_END = "<!-- values-table:end -->\n"


def _type_name(schema: dict[str, Any]) -> str:
    kind = schema.get("type", "")
    kinds = [k for k in (kind if isinstance(kind, list) else [kind]) if k and k != "null"]
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if kinds == ["array"]:
        return f"list of {_type_name(schema.get('items', {})) or 'objects'}"
    if kinds == ["object"] and isinstance(schema.get("additionalProperties"), dict):
        return f"map of {_type_name(schema['additionalProperties'])}"
    if "anyOf" in schema:
        return " or ".join(t for t in (_type_name(o) for o in schema["anyOf"]) if t != "null")
    return " or ".join(kinds)


def _rows(schema: dict[str, Any], values: Any, path: str) -> Iterator[str]:
    for name, child in schema.get("properties", {}).items():
        here = f"{path}.{name}" if path else name
        value = values.get(name) if isinstance(values, dict) else None
        if child.get("properties") and here not in POLICY_SECTIONS:
            yield from _rows(child, value, here)
            continue
        if value is None:
            value = child.get("default")  # the CRD's default, applied by the API server
        shown = "" if value is None else f"`{json.dumps(value)}`"
        description = str(child.get("description", "")).replace("|", "\\|")
        if here in POLICY_SECTIONS:
            description = f"The policy's `spec.{here}`, 1:1 (fields: docs/operator.md)."
        yield f"| `{here}` | {_type_name(child)} | {shown} | {description} |"


def values_table() -> str:
    """The values reference in docs/install.md, from the schema and values.yaml."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    head = "| value | type | default | description |\n| --- | --- | --- | --- |\n"
    return head + "\n".join(_rows(values_schema(), values, "")) + "\n"


def docs_with_table() -> str:
    text = DOCS_FILE.read_text()
    start = text.index(TABLE_BEGIN) + len(TABLE_BEGIN)
    return text[:start] + values_table() + text[text.index(TABLE_END) :]


def helm_binary() -> Path:
    gobuild.ensure(gobuild.helm_tool(), Progress(quiet=True))
    return paths.helm_bin_dir() / "helm"


def helm_template(*args: str, chart: Path = CHART) -> str:
    out = subprocess.run(
        [str(helm_binary()), "template", "openxpu", str(chart), "--namespace", "openxpu", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"helm template failed: {out.stderr.strip()}")
    return out.stdout


def _images(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def images(rendered: str) -> list[str]:
    """Every image a render names: pod specs and the policy's operand images."""
    return sorted({i for doc in yaml.safe_load_all(rendered) for i in _images(doc)})


def images_txt() -> str:
    head = (
        "# Images to mirror for an air-gapped install with the default values.\n"
        "# Generated by tests/helm/chart_gen.py from `helm template`; do not edit.\n"
    )
    return head + "".join(f"{i}\n" for i in images(helm_template()))


def copied_files() -> dict[Path, str]:
    return {
        CHART / "crds" / CRD_FILE: crd_yaml(),
        CHART / "files" / exporter_render.DASHBOARD_FILE: exporter_render.dashboard_json(),
        CHART / "files" / exporter_render.RULES_FILE: (
            exporter_render.ASSETS / exporter_render.RULES_FILE
        ).read_text(),
    }


def generated() -> dict[Path, str]:
    # The schema and copies first: the images render reads them.
    return {SCHEMA_FILE: schema_json(), **copied_files(), DOCS_FILE: docs_with_table()}


def stale(files: dict[Path, str]) -> list[Path]:
    return [p for p, text in files.items() if not p.exists() or p.read_text() != text]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="chart_gen", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = p.parse_args(argv)
    files = generated()
    if not args.check:
        for path, text in files.items():
            path.write_text(text)
    images = {IMAGES_FILE: images_txt()}
    if not args.check:
        IMAGES_FILE.write_text(images[IMAGES_FILE])
    bad = stale({**files, **images})
    for path in bad:
        print(f"stale: {path.relative_to(ROOT)} (run: uv run python -m tests.helm.chart_gen)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
