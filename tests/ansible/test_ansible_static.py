"""The playbooks without a cluster: production lint, syntax, argument specs refusing a
wrong variable before anything runs, the collection from the venv, the version matrix."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
import yaml

from openxpu_lab import versions as lab_versions
from openxpu_operator.policy import DEFAULT_DRIVER_VERSION

from .support import ANSIBLE, PLAYBOOKS, localhost_inventory, playbook, run
from .versions_gen import DOC, ROOT, matrix, render

pytestmark = pytest.mark.unit


def test_ansible_lint_production_profile_passes_offline(tmp_path: Path) -> None:
    # .ansible-lint sets profile production and offline (Galaxy is not reachable).
    out = run("ansible-lint", "--profile", "production", "--offline", home=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "passed" in (out.stdout + out.stderr)


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_playbook_syntax(name: str, tmp_path: Path) -> None:
    inv = localhost_inventory(tmp_path / "inventory.yml")
    out = playbook(name, inv, "--syntax-check", home=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_kubernetes_core_comes_from_the_venv(tmp_path: Path) -> None:
    out = run(
        "ansible-galaxy", "collection", "list", "kubernetes.core", "--format", "json", home=tmp_path
    )
    assert out.returncode == 0, out.stderr
    found = {path: cols for path, cols in json.loads(out.stdout).items() if cols}
    assert len(found) == 1, found
    ((path, cols),) = found.items()
    assert "/site-packages/ansible_collections" in path and str(tmp_path) not in path
    assert cols["kubernetes.core"]["version"] == matrix()["openxpu_versions"]["kubernetes_core"]
    for module in ("helm", "k8s", "k8s_info"):
        doc = run(
            "ansible-doc", "-t", "module", f"kubernetes.core.{module}", "--json", home=tmp_path
        )
        assert doc.returncode == 0, doc.stderr


def _refused(out_text: str) -> list[str]:
    """Tasks that ran, other than the preflight role's own checks."""
    return [
        t
        for t in re.findall(r"TASK \[([^\]]+)\]", out_text)
        if not t.startswith("openxpu_preflight")
    ]


@pytest.mark.parametrize(
    ("name", "variable", "value", "message"),
    [
        (
            "validate.yml",
            "openxpu_validate_timeout",
            "soon",
            "argument 'openxpu_validate_timeout' is of type str",
        ),
        (
            "install.yml",
            "openxpu_cluster_mode",
            "elsewhere",
            "openxpu_cluster_mode must be one of: kubeconfig, lab",
        ),
        (
            "install.yml",
            "openxpu_stack_values",
            "[1]",
            "argument 'openxpu_stack_values' is of type list",
        ),
        (
            "upgrade.yml",
            "openxpu_upgrade_timeout",
            "later",
            "argument 'openxpu_upgrade_timeout' is of type str",
        ),
        (
            "uninstall.yml",
            "openxpu_uninstall_hooks",
            "maybe",
            "argument 'openxpu_uninstall_hooks' is of type str",
        ),
        (
            "validate.yml",
            "openxpu_validate_monitoring",
            "sometimes",
            "argument 'openxpu_validate_monitoring' is of type str",
        ),
        (
            "validate.yml",
            "openxpu_validate_prometheus",
            "http://127.0.0.1:9090",
            "unknown variable(s) openxpu_validate_prometheus",
        ),
        ("install.yml", "openxpu_stack_valeus", "{}", "unknown variable(s) openxpu_stack_valeus"),
        (
            "uninstall.yml",
            "openxpu_uninstal_hooks",
            "false",
            "unknown variable(s) openxpu_uninstal_hooks",
        ),
    ],
)
def test_a_wrong_variable_is_refused_before_anything_runs(
    name: str, variable: str, value: str, message: str, tmp_path: Path
) -> None:
    inv = localhost_inventory(tmp_path / "inventory.yml")
    extra = json.dumps({variable: yaml.safe_load(value)})
    out = playbook(name, inv, "-e", extra, home=tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert message in text, text
    assert _refused(text) == [], f"tasks ran before {variable} was refused: {_refused(text)}"


def test_versions_doc_is_generated_from_the_matrix() -> None:
    assert DOC.read_text() == render(), "run: uv run python -m tests.ansible.versions_gen"


def test_matrix_agrees_with_the_lab_chart_driver_and_pinned_ansible() -> None:
    versions = matrix()["openxpu_versions"]
    assert versions["kubernetes"] == lab_versions.KUBERNETES
    assert versions["containerd"] == lab_versions.CONTAINERD
    assert versions["helm"] == lab_versions.HELM
    chart = yaml.safe_load((ROOT / "helm" / "openxpu" / "Chart.yaml").read_text())
    assert versions["chart"] == chart["version"]
    assert versions["driver"] == DEFAULT_DRIVER_VERSION
    core = importlib.metadata.version("ansible-core")
    low, high = (
        tuple(map(int, versions[k].split("."))) for k in ("ansible_core_min", "ansible_core_below")
    )
    assert low <= tuple(map(int, core.split("."))) < high
    for tested in matrix()["openxpu_versions_tested"]:
        assert tested["ansible_core"] == core
        assert {k: tested[k] for k in ("kubernetes", "helm", "chart", "driver")} == {
            k: versions[k] for k in ("kubernetes", "helm", "chart", "driver")
        }


def test_every_role_has_argument_specs() -> None:
    roles = sorted(p.name for p in (ANSIBLE / "roles").iterdir())
    assert roles and all(
        (ANSIBLE / "roles" / r / "meta" / "argument_specs.yml").is_file() for r in roles
    )


def test_an_unsupported_ansible_core_is_refused_first(tmp_path: Path) -> None:
    inv = localhost_inventory(tmp_path / "inventory.yml")
    versions = dict(
        matrix()["openxpu_versions"], ansible_core_min="2.99.0", ansible_core_below="3.0"
    )
    out = playbook(
        "install.yml", inv, "-e", json.dumps({"openxpu_versions": versions}), home=tmp_path
    )
    text = out.stdout + out.stderr
    core = importlib.metadata.version("ansible-core")
    assert out.returncode == 2, text
    assert f"ansible-core {core} is not supported: these playbooks need >= 2.99.0 and < 3.0" in text
    assert re.findall(r"TASK \[([^\]]+)\]", text)[-1].endswith(
        "Check the ansible-core version is supported"
    )
