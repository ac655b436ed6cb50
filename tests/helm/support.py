"""The chart under test and the real helm binary (built by the lab from its Go module)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from .chart_gen import CHART, helm_binary

Doc = dict[str, Any]

DIGEST = "sha256:" + "ab" * 32
MIRROR = "registry.local:5000"

VARIANTS: dict[str, tuple[str, ...]] = {
    "defaults": (),
    "monitoring": (
        "--set=exporter.serviceMonitor.enabled=true",
        "--set=exporter.serviceMonitor.additionalLabels.release=kube-prometheus-stack",
    ),
    "air-gapped": (
        f"--set=global.imageRegistry={MIRROR}",
        f"--set=images.openxpu.digest={DIGEST}",
        "--set=global.imagePullSecrets[0]=mirror-credentials",
    ),
    "no-policy": ("--set=clusterPolicy.create=false",),
    "policy-sections": (
        "--set-string=driver.version=0.2.0",
        "--set=driver.profile=x1-8",
        "--set=devicePlugin.config.sharing.timeSlicing.replicas=4",
        "--set=exporter.dcgmCompat=true",
        "--set=cdi.enabled=false",
        "--set=validator.workload.enabled=false",
        "--set=daemonsets.priorityClassName=xpu-critical",
        "--set-string=nodeSelector.openxpu\\.io/xpu\\.present=true",
        "--set=operator.defaultRuntime=crio",
        "--set=operator.labels.team=ml",
    ),
    "uninstall-deletes-crd": ("--set=crds.deleteOnUninstall=true", "--set=crds.upgrade=false"),
}


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
