"""The Kubernetes API for feature discovery: read and label this plugin's own Node.

The official client's asyncio flavour (`kubernetes.aio`) does the connecting: a kubeconfig
(`--kubeconfig`, else every file in $KUBECONFIG, merged as kubectl merges them, with exec
credential plugins), or inside a pod the service account, whose bound token is re-read as
the kubelet rotates it. Every failure of a call, whatever layer raised it, is a KubeError.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import NewType

from kubernetes.aio import client, config
from kubernetes.aio.config.config_exception import ConfigException
from kubernetes.aio.config.incluster_config import InClusterConfigLoader

NodeName = NewType("NodeName", str)
# A merge patch of labels: a value of None deletes the label.
LabelPatch = dict[str, str | None]

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Seconds: one node's GET or PATCH is small, and a hung call must not stall
# the labeller past its retry.
TIMEOUT = 10.0


class KubeError(RuntimeError):
    pass


async def configure(
    kubeconfig: str | None = None,
    sa_dir: Path = SA_DIR,
    environ: dict[str, str] | None = None,
) -> client.Configuration:
    """Credentials from `kubeconfig`, else $KUBECONFIG, else the pod's service account."""
    env = dict(os.environ) if environ is None else environ
    configuration = client.Configuration()
    try:
        if kubeconfig or env.get("KUBECONFIG"):
            # The client merges a $KUBECONFIG list (path-separated) like kubectl does.
            # The client's config loaders are not annotated.
            await config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig or env["KUBECONFIG"],
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            if not env.get("KUBERNETES_SERVICE_HOST"):
                raise KubeError(
                    "not in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig given"
                )
            loader = InClusterConfigLoader(  # type: ignore[no-untyped-call]
                token_filename=str(sa_dir / "token"),
                cert_filename=str(sa_dir / "ca.crt"),
                # Re-read the token file (a bound token the kubelet rotates) every minute.
                try_refresh_token=True,
                environ=env,
            )
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
    except (ConfigException, OSError, ValueError) as exc:
        raise KubeError(f"cannot load Kubernetes credentials: {exc}") from None
    # The labeller retries with its own backoff; the client's retries would only hide an outage.
    configuration.retries = 0
    return configuration


class KubeClient:
    def __init__(self, configuration: client.Configuration) -> None:
        self._api = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._api)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> KubeClient:
        return cls(await configure(kubeconfig))

    async def aclose(self) -> None:
        await self._api.close()  # type: ignore[no-untyped-call]

    async def node_labels(self, name: NodeName) -> dict[str, str]:
        try:
            node = await self._core.read_node(name, _request_timeout=TIMEOUT)
        except Exception as exc:
            raise _error(f"get node {name}", exc) from None
        return dict(node.metadata.labels or {}) if node.metadata else {}

    async def patch_node_labels(self, name: NodeName, labels: LabelPatch) -> dict[str, str]:
        """Apply a merge patch to the node's labels; returns the labels after it."""
        try:
            node = await self._core.patch_node(
                name,
                {"metadata": {"labels": labels}},
                _content_type="application/merge-patch+json",
                _request_timeout=TIMEOUT,
            )
        except Exception as exc:
            raise _error(f"label node {name}", exc) from None
        return dict(node.metadata.labels or {}) if node.metadata else {}


def _error(what: str, exc: Exception) -> KubeError:
    if isinstance(exc, client.ApiException):
        try:
            message = json.loads(exc.body or "")["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        return KubeError(f"{what}: {exc.status} {message}")
    # aiohttp's connection errors are OSErrors.
    if isinstance(exc, OSError | asyncio.TimeoutError):
        return KubeError(f"{what}: cannot reach the API server: {exc or type(exc).__name__}")
    # A client-side failure we did not foresee (a bad token file mid-rotation, a response
    # the client cannot decode): still this one call's failure, to be retried.
    return KubeError(f"{what}: {type(exc).__name__}: {exc}")
