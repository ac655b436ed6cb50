"""What the security tests share: our RBAC and admission objects from each place that
defines them, and kubectl against an apiserver-only cluster (as admin or with a token)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from openxpu_lab import gobuild, paths
from openxpu_lab.envtest import ApiServer
from openxpu_lab.gobuild import kubectl_path
from openxpu_lab.progress import Progress
from openxpu_operator.policy import load_policy
from openxpu_operator.render import RenderContext, render_operands

ROOT = Path(__file__).resolve().parents[2]
DEMO_STACK = ROOT / "demo" / "stack"
CHART = ROOT / "helm" / "openxpu"
# Every ServiceAccount the chart can make: the optional hooks and the monitoring rules on.
CHART_ALL_ACCOUNTS = (
    "--set=crds.upgrade=true",
    "--set=crds.deleteOnUninstall=true",
    "--set=exporter.serviceMonitor.enabled=true",
)
NS = "openxpu"

Doc = dict[str, Any]


def operator_operands() -> list[Doc]:
    """Every operand object the operator applies for a policy with every operand enabled
    (the defaults) and the exporter's ServiceMonitor on."""
    spec = {"exporter": {"serviceMonitor": {"enabled": True}}}
    meta = {"name": "cluster-policy", "uid": "2f1c8a53-6a53-4b8e-9a4e-3c1f0e0b7d11"}
    policy = load_policy({"metadata": meta, "spec": spec})
    return [o for r in render_operands(policy, RenderContext(nodes=("n1",))) for o in r.objects]


def demo_stack() -> list[Doc]:
    return [
        d for f in sorted(DEMO_STACK.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def helm_chart() -> list[Doc]:
    """The chart as `helm template` renders it (helm built by the lab from its Go module)."""
    gobuild.ensure(gobuild.helm_tool(), Progress(quiet=True))
    argv = [str(paths.helm_bin_dir() / "helm"), "template", "openxpu", str(CHART)]
    argv += ["--namespace", NS, *CHART_ALL_ACCOUNTS]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=240)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def kubectl(
    api: ApiServer,
    *args: str,
    stdin: str | None = None,
    token: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """kubectl as the admin, or, given a token, as that token's user only."""
    if token is None:
        who = ["--kubeconfig", str(api.kubeconfig)]
    else:
        who = ["--kubeconfig=/dev/null", f"--server={api.url}", f"--token={token}"]
        who.append(f"--certificate-authority={api.ca_cert}")
    argv = [str(kubectl_path()), *who, *args]
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr}")
    return out


def apply(api: ApiServer, docs: list[Doc]) -> None:
    kubectl(api, "apply", "--server-side", "-f", "-", stdin=json.dumps(_as_list(docs)))


def _as_list(docs: list[Doc]) -> Doc:
    return {"apiVersion": "v1", "kind": "List", "items": docs}
