"""docs/versions.md from ansible/versions.yml: `uv run python -m tests.ansible.versions_gen`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
MATRIX = ROOT / "ansible" / "versions.yml"
DOC = ROOT / "docs" / "versions.md"

COMPONENTS = (
    ("kubernetes", "Kubernetes", "the lab builds it from `k8s.io/kubernetes`"),
    ("containerd", "containerd", "the lab builds it from its Go module (CDI needs >= 1.7)"),
    ("helm", "Helm", "the lab builds it; any Helm >= 3.18 works"),
    ("chart", "OpenXPU chart", "`helm/openxpu`"),
    ("driver", "XPU driver", "the default policy's `driver.version`"),
    (
        "kubernetes_core",
        "kubernetes.core",
        "Ansible collection, from the pinned `ansible` PyPI package",
    ),
)


def matrix() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(MATRIX.read_text())
    return loaded


def render() -> str:
    m = matrix()
    versions = m["openxpu_versions"]
    lines = [
        "# Versions",
        "",
        "<!-- generated from ansible/versions.yml by `uv run python -m tests.ansible.versions_gen`;"
        " do not edit -->",
        "",
        "The component matrix: every version the OpenXPU playbooks pin, from one file",
        "(`ansible/versions.yml`). The playbooks refuse an ansible-core outside "
        f"`>= {versions['ansible_core_min']}, < {versions['ansible_core_below']}`.",
        "",
        "| component | version | notes |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {name} | `{versions[key]}` | {note} |" for key, name, note in COMPONENTS]
    lines += [
        "",
        "## Combinations the tests run",
        "",
        "| test | ansible-core | Kubernetes | Helm | chart | driver |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {t['test']} | `{t['ansible_core']}` | `{t['kubernetes']}` | `{t['helm']}` "
        f"| `{t['chart']}` | `{t['driver']}` |"
        for t in m["openxpu_versions_tested"]
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    DOC.write_text(render())
    print(f"wrote {DOC.relative_to(ROOT)}")
