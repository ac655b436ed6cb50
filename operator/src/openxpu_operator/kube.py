"""The operator's one way to the API server: a small typed async client over httpx.

Credentials come from kopf's own login helpers (in-cluster service account, else
KUBECONFIG), so the operator and kopf see the cluster the same way. Every write that
creates or changes an operand is a server-side apply with ONE field manager, FIELD_MANAGER;
objects are found again by the managed-by label, never by remembering them.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import kopf

from openxpu_operator import metrics
from openxpu_operator.crd import CRD_NAME
from openxpu_operator.policy import GROUP, PLURAL, VERSION
from openxpu_operator.render import KINDS, MANAGED_BY, MANAGER, object_path

FIELD_MANAGER = MANAGER
POLICIES = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
NODES = "/api/v1/nodes"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGER}"

JSON = dict[str, Any]


class ApiError(RuntimeError):
    """An API answer that is not a success; `status` is the HTTP status code."""

    def __init__(self, method: str, path: str, status: int, message: str) -> None:
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.message = message


def _material(path: Any, data: Any, workdir: str, name: str) -> str | None:
    """A PEM file path from a kubeconfig entry given as a path or as base64 data."""
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    raw = data if isinstance(data, bytes) else data.encode()
    target = os.path.join(workdir, name)
    with open(target, "wb") as f:
        f.write(base64.b64decode(raw))
    return target


def _connection() -> kopf.ConnectionInfo:
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no credentials: neither a service account nor KUBECONFIG")
    return info


def _http(info: kopf.ConnectionInfo) -> httpx.AsyncClient:
    with tempfile.TemporaryDirectory(prefix="openxpu-operator-") as workdir:
        tls = ssl.create_default_context(
            cafile=_material(info.ca_path, info.ca_data, workdir, "ca.crt")
        )
        if info.insecure:
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        cert = _material(info.certificate_path, info.certificate_data, workdir, "tls.crt")
        key = _material(info.private_key_path, info.private_key_data, workdir, "tls.key")
        if cert:
            tls.load_cert_chain(cert, key)
    headers = {"Authorization": f"Bearer {info.token}"} if info.token else {}
    return httpx.AsyncClient(
        base_url=info.server, verify=tls, headers=headers, timeout=httpx.Timeout(30.0)
    )


def now() -> str:
    """The current time as the API server writes it (RFC 3339, seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Kube:
    """Typed access to the few API operations the operator makes."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @classmethod
    def from_environment(cls) -> Kube:
        return cls(_http(_connection()))

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
        missing_ok: bool = False,
    ) -> JSON | None:
        metrics.API_REQUESTS.inc()
        content = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if content is not None else {}
        r = await self.http.request(method, path, content=content, headers=headers, params=params)
        if r.status_code == 404 and missing_ok:
            return None
        if r.status_code >= 400:
            try:
                message = r.json().get("message", r.text)
            except ValueError:
                message = r.text
            raise ApiError(method, path, r.status_code, message)
        if not r.content:
            return {}
        data: JSON = r.json()
        return data

    async def get(self, path: str) -> JSON | None:
        """The object at `path`, or None when there is none."""
        return await self._call("GET", path, missing_ok=True)

    async def list_items(self, path: str, label_selector: str | None = None) -> list[JSON]:
        """Every item of a collection (None-safe for an API that is not installed)."""
        params = {"labelSelector": label_selector} if label_selector else None
        data = await self._call("GET", path, params=params, missing_ok=True)
        items: list[JSON] = (data or {}).get("items") or []
        return items

    async def list_version(self, path: str, label_selector: str) -> str:
        """The resourceVersion a watch of the collection starts from."""
        params = {"labelSelector": label_selector, "limit": "1"}
        data = await self._call("GET", path, params=params)
        return str(((data or {}).get("metadata") or {}).get("resourceVersion", ""))

    async def watch(
        self, path: str, label_selector: str, resource_version: str, seconds: int
    ) -> AsyncIterator[JSON]:
        """The watch events of a collection from `resource_version` on, for at most
        `seconds` (the server then ends the stream); raises ApiError on a refused watch."""
        metrics.API_REQUESTS.inc()
        params = {
            "watch": "1",
            "labelSelector": label_selector,
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        timeout = httpx.Timeout(30.0, read=seconds + 30.0)
        async with self.http.stream("GET", path, params=params, timeout=timeout) as r:
            if r.status_code >= 400:
                await r.aread()
                raise ApiError("WATCH", path, r.status_code, r.text)
            async for line in r.aiter_lines():
                if line:
                    event: JSON = json.loads(line)
                    yield event

    async def text(self, path: str, params: Mapping[str, str]) -> str:
        metrics.API_REQUESTS.inc()
        r = await self.http.get(path, params=params)
        return r.text if r.status_code == 200 else ""

    async def apply(self, obj: Mapping[str, Any]) -> JSON:
        """Server-side apply with our field manager, taking over fields others changed."""
        data = await self._call(
            "PATCH",
            object_path(obj),
            body=obj,
            content_type="application/apply-patch+yaml",
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
        )
        assert data is not None
        return data

    async def create(self, path: str, obj: Mapping[str, Any]) -> JSON | None:
        """Create; None when it exists already."""
        try:
            return await self._call("POST", path, body=obj)
        except ApiError as exc:
            if exc.status == 409:
                return None
            raise

    async def replace(self, path: str, obj: Mapping[str, Any]) -> JSON:
        data = await self._call("PUT", path, body=obj)
        assert data is not None
        return data

    async def delete(self, path: str, *, force: bool = False) -> bool:
        """Delete in the background (dependents too); False when it was gone already.
        `force` skips the grace period: for a pod whose kubelet will never confirm."""
        params = {"propagationPolicy": "Background"}
        if force:
            params["gracePeriodSeconds"] = "0"
        return await self._call("DELETE", path, params=params, missing_ok=True) is not None

    async def delete_object(self, obj: Mapping[str, Any]) -> bool:
        return await self.delete(object_path(obj))

    async def merge_patch(self, path: str, patch: Mapping[str, Any]) -> JSON | None:
        return await self._call(
            "PATCH", path, body=patch, content_type="application/merge-patch+json", missing_ok=True
        )

    # -- what the controller needs, by name --------------------------------------------

    async def policies(self) -> list[JSON]:
        return await self.list_items(POLICIES)

    async def policy(self, name: str) -> JSON | None:
        return await self.get(f"{POLICIES}/{name}")

    async def patch_policy_status(self, name: str, status: Mapping[str, Any]) -> None:
        await self.merge_patch(f"{POLICIES}/{name}/status", {"status": status})

    async def installed_crd(self) -> JSON | None:
        return await self.get(f"{CRDS}/{CRD_NAME}")

    async def nodes(self) -> list[JSON]:
        return await self.list_items(NODES)

    async def label_node(self, name: str, labels: Mapping[str, str | None]) -> None:
        """Set (a value) or remove (None) node labels; other labels are left alone."""
        if labels:
            await self.merge_patch(f"{NODES}/{name}", {"metadata": {"labels": dict(labels)}})

    async def ensure_namespace(self, name: str) -> None:
        await self.create("/api/v1/namespaces", {"metadata": {"name": name}})

    async def managed_objects(self, namespace: str, selector: str) -> list[JSON]:
        """Every object of the kinds the operator renders that carries `selector`."""
        found: list[JSON] = []
        for (api_version, kind), (resource, namespaced) in KINDS.items():
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            where = f"/namespaces/{namespace}" if namespaced else ""
            for item in await self.list_items(f"{base}{where}/{resource}", selector):
                found.append({"apiVersion": api_version, "kind": kind, **item})
        return found

    async def pods(self, namespace: str, selector: str) -> list[JSON]:
        return await self.list_items(f"/api/v1/namespaces/{namespace}/pods", selector)

    async def log_tail(self, namespace: str, pod: str, container: str, lines: int = 20) -> str:
        return await self.text(
            f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
            {"container": container, "tailLines": str(lines)},
        )

    async def event(
        self,
        policy: Mapping[str, Any],
        namespace: str,
        kind: str,
        reason: str,
        message: str,
    ) -> None:
        """A Kubernetes Event about the (cluster-scoped) policy."""
        meta = policy["metadata"]
        stamp = now()
        await self.create(
            f"/api/v1/namespaces/{namespace}/events",
            {
                "metadata": {"generateName": f"{meta['name']}."},
                "involvedObject": {
                    "apiVersion": policy["apiVersion"],
                    "kind": policy["kind"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "type": kind,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": MANAGER},
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "count": 1,
            },
        )
