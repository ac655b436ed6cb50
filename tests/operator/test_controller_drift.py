"""CRD drift (pure): fields the installed CRD would prune are named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from openxpu_operator.crd import crd
from openxpu_operator.drift import missing_fields

pytestmark = pytest.mark.unit


def _schema(definition: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_built_in_crd_has_no_drift() -> None:
    assert missing_fields(crd()) == []


def test_an_older_crd_without_a_field_is_outdated_naming_it() -> None:
    old = copy.deepcopy(crd())
    spec = _schema(old)["properties"]["spec"]["properties"]
    del spec["exporter"]["properties"]["dcgmCompat"]
    del spec["emulation"]["properties"]["nodePools"]["items"]["properties"]["profile"]
    assert missing_fields(old) == [
        "spec.exporter.dcgmCompat",
        "spec.emulation.nodePools[].profile",
    ]


def test_a_section_that_preserves_unknown_fields_prunes_nothing() -> None:
    old = copy.deepcopy(crd())
    _schema(old)["properties"]["spec"]["properties"]["exporter"] = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }
    assert missing_fields(old) == []


def test_no_crd_or_another_version_is_outdated() -> None:
    assert missing_fields(None) == ["spec", "status"]
    other = copy.deepcopy(crd())
    other["spec"]["versions"][0]["name"] = "v1alpha1"
    assert missing_fields(other) == ["spec", "status"]
