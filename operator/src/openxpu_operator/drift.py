"""CRD drift: fields this operator reads or writes that the installed CRD would prune.

An older CRD silently drops new fields on every write; an operator that trusted it would
report Ready on a spec it never saw (edgelesssys/contrast#2599). The operator compares the
installed schema with the one it was built with and reports CRDOutdated instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openxpu_operator.crd import crd
from openxpu_operator.policy import VERSION

PRESERVE = "x-kubernetes-preserve-unknown-fields"


def _schema(definition: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for version in definition.get("spec", {}).get("versions") or []:
        if version.get("name") == VERSION:
            schema: Mapping[str, Any] = version.get("schema", {}).get("openAPIV3Schema") or {}
            return schema
    return None


def _missing(built: Mapping[str, Any], installed: Mapping[str, Any], path: str) -> list[str]:
    if installed.get(PRESERVE):
        return []  # the installed schema keeps whatever is written here
    out: list[str] = []
    have = installed.get("properties") or {}
    for name, sub in (built.get("properties") or {}).items():
        where = f"{path}.{name}" if path else name
        if name not in have:
            out.append(where)
        else:
            out.extend(_missing(sub, have[name], where))
    built_items, installed_items = built.get("items"), installed.get("items")
    if isinstance(built_items, Mapping) and isinstance(installed_items, Mapping):
        out.extend(_missing(built_items, installed_items, f"{path}[]"))
    extra = built.get("additionalProperties")
    have_extra = installed.get("additionalProperties")
    if isinstance(extra, Mapping) and isinstance(have_extra, Mapping):
        out.extend(_missing(extra, have_extra, f"{path}.*"))
    return out


def missing_fields(
    installed: Mapping[str, Any] | None, built: Mapping[str, Any] | None = None
) -> list[str]:
    """Dotted paths (spec.exporter.dcgmCompat, ...) the installed CRD would prune; every
    top-level section when the CRD or its version is not there at all."""
    want = _schema(built or crd())
    assert want is not None
    have = _schema(installed) if installed else None
    if have is None:
        return ["spec", "status"]
    return _missing(want, have, "")
