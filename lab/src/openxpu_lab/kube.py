"""The lab's own calls to its API server, through the official Kubernetes client."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

# What a call may raise when the API server answers with an error or not at all.
API_ERRORS: tuple[type[Exception], ...] = (ApiException, urllib3.exceptions.HTTPError, OSError)
TIMEOUT = 10.0


def describe(exc: Exception) -> str:
    """One line for an API failure (an ApiException's text carries headers and body)."""
    if isinstance(exc, ApiException):
        return f"the API server answered HTTP {exc.status} {exc.reason}"
    return f"the API server did not answer: {exc}"


def api_client(kubeconfig: Path) -> Any:
    """A client of the kubeconfig's identity. No retries: the lab's readiness loops poll."""
    cfg = client.Configuration()
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig), client_configuration=cfg
    )
    cfg.retries = False
    return client.ApiClient(cfg)


def core(api: Any) -> Any:
    return client.CoreV1Api(api)


def ready(api: Any) -> bool:
    """The API server's /readyz answers ok."""
    try:
        request = api.param_serialize("GET", "/readyz", auth_settings=["BearerToken"])
        return bool(api.call_api(*request, _request_timeout=3).status == 200)
    except API_ERRORS:
        return False


def exists(read: Callable[..., Any], *args: Any) -> bool:
    """True if `read(*args)` succeeds, False on 404; other failures raise."""
    try:
        read(*args, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def status_of(call: Callable[..., Any], *args: Any) -> int:
    """The HTTP status `call(*args)` got (200 when it succeeded)."""
    try:
        call(*args, _request_timeout=TIMEOUT)
    except ApiException as exc:
        return int(exc.status)
    return 200


def node_ready(api: Any, name: str, since: float = 0.0) -> bool:
    """Ready, and (with `since`) reported by a kubelet heartbeat at or after that time:
    after a restart the node object still shows the last run's stale Ready."""
    try:
        node = core(api).read_node(name, _request_timeout=5)
    except API_ERRORS:
        return False
    for cond in node.status.conditions or []:
        if cond.type == "Ready" and cond.status == "True":
            beat: dt.datetime = cond.last_heartbeat_time
            # Heartbeats have one-second resolution.
            return beat.timestamp() >= since - 1.0
    return False


def apply_cluster_wide(create: Callable[..., Any], replace: Callable[..., Any], body: Any) -> None:
    """Create a cluster-scoped object, or replace it with `body` if it exists."""
    try:
        create(body=body, _request_timeout=TIMEOUT)
    except ApiException as exc:
        if exc.status != 409:
            raise
        replace(body["metadata"]["name"], body=body, _request_timeout=TIMEOUT)
