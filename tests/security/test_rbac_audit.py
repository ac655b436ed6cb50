"""RBAC audit: every ServiceAccount we define has exactly the permissions committed in
expected-permissions/<source>.yaml, as the API server itself computes them.

Each source (the operator's operands, the Helm chart, the demo stack) gets its own
apiserver-only cluster; its RBAC objects are applied and `kubectl auth can-i --list --as`
each ServiceAccount is read in every namespace the source grants something in and in one
it grants nothing in. What every authenticated user may do (discovery, self reviews) is
measured on an unbound ServiceAccount and left out. A change of rights shows up as a diff
of the expectation, reviewed by hand; `OPENXPU_UPDATE_EXPECTED=1` rewrites the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from openxpu_lab import apiserver_only
from openxpu_lab.envtest import ApiServer

from .support import NS, Doc, apply, demo_stack, helm_chart, kubectl, operator_operands

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 and not os.path.exists("/usr/bin/etcd"),
    reason="needs etcd (root installs it with apt)",
)

EXPECTED = Path(__file__).parent / "expected-permissions"
SOURCES: dict[str, Callable[[], list[Doc]]] = {
    "operator-operands": operator_operands,
    "helm-chart": helm_chart,
    "demo-stack": demo_stack,
}
RBAC_KINDS = ("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")
# A namespace no source grants anything in: what shows there is cluster-wide.
ELSEWHERE = "audit-elsewhere"
UNBOUND = "audit-unbound"
# Per ServiceAccount ("ns:name"): "everywhere" or "in <namespace>" -> can-i rows.
Rights = dict[str, dict[str, list[str]]]
HEADER = """\
# Effective permissions of each ServiceAccount of ours ({source}), as
# `kubectl auth can-i --list` reports them: "everywhere" (cluster-wide), then per namespace
# what comes on top. Rows: resource, resource names, verbs. Reviewed by hand: a diff here is
# a change of rights. tests/security/test_rbac_audit.py fails when the API server disagrees.
"""


def _rbac(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in RBAC_KINDS]


def _accounts(docs: list[Doc]) -> list[str]:
    return sorted(
        f"{d['metadata']['namespace']}:{d['metadata']['name']}"
        for d in docs
        if d["kind"] == "ServiceAccount"
    )


def _namespaces(docs: list[Doc]) -> list[str]:
    return sorted({d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]})


def _can_i(api: ApiServer, account: str, namespace: str) -> set[str]:
    """`auth can-i --list` rows as "resource [names] [verbs]" (non-resource URLs too)."""
    ns, name = account.split(":")
    out = kubectl(
        api, "auth", "can-i", "--list", "-n", namespace, f"--as=system:serviceaccount:{ns}:{name}"
    ).stdout
    rows = set()
    for line in out.splitlines()[1:]:
        # The resource column never holds a bracket; the other three are bracketed lists.
        cut = line.index("[")
        resource, rest = line[:cut].strip(), line[cut:]
        url, names, verbs = (part.strip() for part in _bracketed(rest))
        rows.add(f"{resource or url} {names} {verbs}")
    return rows


def _bracketed(text: str) -> list[str]:
    """The three `[...]` columns of a can-i row (names and verbs may hold spaces)."""
    parts = re.findall(r"\[[^\]]*\]", text)
    assert len(parts) == 3, f"unexpected can-i row: {text!r}"
    return parts


@pytest.fixture(scope="module", params=sorted(SOURCES))
def audited(request: pytest.FixtureRequest) -> Iterator[tuple[str, Rights]]:
    """(source, each of its ServiceAccounts' effective rights), measured on a fresh cluster."""
    source: str = request.param
    docs = _rbac(SOURCES[source]())
    with apiserver_only() as api:
        for ns in {*_namespaces(docs), ELSEWHERE} - {"default"}:
            kubectl(api, "create", "namespace", ns)
        apply(api, docs)
        kubectl(api, "create", "serviceaccount", UNBOUND, "-n", ELSEWHERE)
        effective = _effective(api, docs)
    yield source, effective


def _effective(api: ApiServer, docs: list[Doc]) -> Rights:
    baseline = _can_i(api, f"{ELSEWHERE}:{UNBOUND}", ELSEWHERE)
    result: Rights = {}
    for account in _accounts(docs):
        everywhere = _can_i(api, account, ELSEWHERE) - baseline
        per_account = {"everywhere": sorted(everywhere)}
        for ns in _namespaces(docs):
            extra = _can_i(api, account, ns) - baseline - everywhere
            if extra:
                per_account[f"in {ns}"] = sorted(extra)
        result[account] = per_account
    return result


@pytest.mark.integration
def test_effective_permissions_match_the_expectation(audited: tuple[str, Rights]) -> None:
    source, effective = audited
    path = EXPECTED / f"{source}.yaml"
    if os.environ.get("OPENXPU_UPDATE_EXPECTED"):
        body = yaml.safe_dump(effective, sort_keys=True, width=200)
        path.write_text(HEADER.format(source=source) + body)
    expected = yaml.safe_load(path.read_text())
    assert sorted(effective) == sorted(expected), f"ServiceAccounts differ from {path.name}"
    for account, rights in effective.items():
        assert rights == expected[account], f"{account}: rights differ from {path.name}"


@pytest.mark.integration
def test_no_wildcards_in_effective_permissions(audited: tuple[str, Rights]) -> None:
    for account, rights in audited[1].items():
        for row in (r for rows in rights.values() for r in rows):
            assert "*" not in row, f"{account}: wildcard in {row!r}"


@pytest.mark.unit
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_rules_name_no_wildcard_and_bind_only_our_accounts(source: str) -> None:
    docs = _rbac(SOURCES[source]())
    for d in docs:
        for rule in d.get("rules", []):
            for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in v for v in rule.get(key, [])), f"{d['metadata']['name']}"
    ours = set(_accounts(docs))
    for d in docs:
        for s in d.get("subjects", []):
            assert s["kind"] == "ServiceAccount", f"{d['metadata']['name']} binds {s}"
            assert f"{s['namespace']}:{s['name']}" in ours, f"{d['metadata']['name']} binds {s}"


def _pod_specs(docs: list[Doc]) -> Iterator[tuple[str, str, Doc]]:
    """(name, namespace, pod spec) of every Pod and pod template."""
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec if d["kind"] == "Pod" else spec.get("template", {}).get("spec")
        if pod is not None:
            yield d["metadata"]["name"], d["metadata"].get("namespace", NS), pod


@pytest.mark.unit
@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_pod_runs_as_an_audited_account_or_without_a_token(source: str) -> None:
    docs = SOURCES[source]()
    audited = set(_accounts(docs))
    pods = list(_pod_specs(docs))
    assert pods
    for name, ns, pod in pods:
        account = f"{ns}:{pod.get('serviceAccountName', 'default')}"
        assert account in audited or pod.get("automountServiceAccountToken") is False, (
            f"{name} runs as {account}, which is not audited, with a token"
        )
