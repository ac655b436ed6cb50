"""The chart under test and the real helm binary (built by the lab from its Go module)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .chart_gen import CHART, helm_binary

Doc = dict[str, Any]


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(helm_binary()), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=240)
    if check and out.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({out.returncode}): {out.stderr}")
    return out


def template(
    *args: str, chart: Path = CHART, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return helm("template", "openxpu", str(chart), "--namespace", "openxpu", *args, check=check)


def render(*args: str, chart: Path = CHART) -> list[Doc]:
    return [d for d in yaml.safe_load_all(template(*args, chart=chart).stdout) if d]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = find(docs, kind, name)
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in the render"
    return found[0]


def is_hook(doc: Doc) -> bool:
    return "helm.sh/hook" in (doc["metadata"].get("annotations") or {})
