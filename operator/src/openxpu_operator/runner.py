"""`openxpu-operator run`: hold the Lease, serve /metrics, run the kopf handlers."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass

import kopf
from prometheus_client import start_http_server

from openxpu_operator import metrics
from openxpu_operator.controller import Controller, Settings
from openxpu_operator.kube import Kube
from openxpu_operator.lease import LeaseElector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    settings: Settings
    lease_name: str = "openxpu-operator"
    lease_seconds: int = 15
    identity: str = ""
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8080
    liveness: str = "http://0.0.0.0:8081/healthz"


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


async def run(options: RunOptions) -> int:
    """Run until stopped (0) or until the Lease is lost (1: restart and contend again)."""
    from openxpu_operator import handlers  # noqa: F401  (registers the kopf handlers)

    kube = Kube.from_environment()
    namespace = options.settings.namespace
    try:
        await kube.ensure_namespace(namespace)
        elector = LeaseElector(
            kube,
            namespace,
            options.lease_name,
            options.identity or default_identity(),
            options.lease_seconds,
        )
        await elector.acquire()
        if options.metrics_port:
            start_http_server(options.metrics_port, options.metrics_address, metrics.REGISTRY)
        lost = asyncio.Event()
        keeper = asyncio.create_task(elector.keep(lost))
        controller = Controller(kube, options.settings)
        try:
            await kopf.operator(
                clusterwide=True,
                standalone=True,  # the Lease, not kopf's peering, keeps replicas apart
                liveness_endpoint=options.liveness or None,
                stop_flag=lost,
                memo=kopf.Memo(controller=controller),
            )
        finally:
            keeper.cancel()
            if not lost.is_set():
                await elector.release()
        return 1 if lost.is_set() else 0
    finally:
        await kube.close()
