"""The operator's RBAC (operator/deploy/rbac.yaml): no wildcards, every rendered kind covered
with the verbs server-side apply and pruning need."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from openxpu_operator.render import KINDS

pytestmark = pytest.mark.unit

RBAC = Path(__file__).parents[2] / "operator/deploy/rbac.yaml"
OPERAND_VERBS = {"get", "list", "create", "patch", "delete"}


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(RBAC.read_text()):
        rules.extend(doc.get("rules") or [])
    return rules


def test_no_wildcards() -> None:
    for rule in _rules():
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule


def test_every_rendered_kind_can_be_applied_and_pruned() -> None:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in _rules():
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    for (api_version, _kind), (resource, _namespaced) in KINDS.items():
        group = api_version.rpartition("/")[0]
        assert granted.get((group, resource), set()) >= OPERAND_VERBS, (group, resource)
