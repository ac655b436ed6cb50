"""A minimal Kubernetes API client for one job: read and label this plugin's own Node.

Feature discovery needs two calls (GET and a merge PATCH of one Node), so a small typed
httpx client replaces a full client library. Credentials come from a kubeconfig
(`--kubeconfig` / $KUBECONFIG) or, inside a pod, the service account.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NewType, TypedDict

import httpx
import yaml

NodeName = NewType("NodeName", str)
# A merge patch of labels: a value of None deletes the label.
LabelPatch = dict[str, str | None]

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = httpx.Timeout(10.0, connect=5.0)


class ObjectMeta(TypedDict, total=False):
    name: str
    labels: dict[str, str]
    resourceVersion: str


class Node(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta


class KubeError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    server: str
    ssl: ssl.SSLContext | bool
    token: str | None = None


def _materialize(data: str, suffix: str) -> str:
    """A base64 `*-data` field as a private temp file, as ssl wants paths."""
    fd, path = tempfile.mkstemp(prefix="openxpu-kube-", suffix=suffix)
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(data))
    return path


def _pick(items: list[dict[str, Any]], name: str, what: str) -> dict[str, Any]:
    for item in items:
        if item.get("name") == name:
            found: dict[str, Any] = item.get(what) or {}
            return found
    raise KubeError(f"kubeconfig has no {what} named {name!r}")


def from_kubeconfig(path: Path) -> Credentials:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeError(f"cannot read kubeconfig {path}: {exc}") from None
    base = path.parent
    context = _pick(doc.get("contexts", []), doc.get("current-context", ""), "context")
    cluster = _pick(doc.get("clusters", []), context.get("cluster", ""), "cluster")
    user = _pick(doc.get("users", []), context.get("user", ""), "user")

    def file_of(key: str, suffix: str, section: dict[str, Any]) -> str | None:
        if section.get(f"{key}-data"):
            return _materialize(section[f"{key}-data"], suffix)
        if section.get(key):
            return str(base / section[key])
        return None

    ctx: ssl.SSLContext | bool
    if cluster.get("insecure-skip-tls-verify"):
        ctx = False
    else:
        ctx = ssl.create_default_context(cafile=file_of("certificate-authority", ".crt", cluster))
    cert = file_of("client-certificate", ".crt", user)
    key = file_of("client-key", ".key", user)
    if cert and key:
        if isinstance(ctx, bool):
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = Path(user["tokenFile"]).read_text().strip()
    return Credentials(server=str(cluster["server"]).rstrip("/"), ssl=ctx, token=token)


def in_cluster() -> Credentials:
    host, port = (
        os.environ.get("KUBERNETES_SERVICE_HOST"),
        os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
    )
    if not host:
        raise KubeError("not in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig given")
    if ":" in host:
        host = f"[{host}]"
    ctx = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    return Credentials(f"https://{host}:{port}", ctx, (SA_DIR / "token").read_text().strip())


def load_credentials(kubeconfig: str | None) -> Credentials:
    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path:
        return from_kubeconfig(Path(path.split(os.pathsep)[0]))
    return in_cluster()


class KubeClient:
    def __init__(self, creds: Credentials) -> None:
        headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
        self._http = httpx.AsyncClient(
            base_url=creds.server, verify=creds.ssl, headers=headers, timeout=TIMEOUT
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _check(self, r: httpx.Response, what: str) -> None:
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise KubeError(f"{what}: {r.status_code} {message}")

    async def get_node(self, name: NodeName) -> Node:
        r = await self._http.get(f"/api/v1/nodes/{name}")
        await self._check(r, f"get node {name}")
        node: Node = r.json()
        return node

    async def patch_node_labels(self, name: NodeName, labels: LabelPatch) -> Node:
        r = await self._http.patch(
            f"/api/v1/nodes/{name}",
            json={"metadata": {"labels": labels}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        await self._check(r, f"label node {name}")
        node: Node = r.json()
        return node
