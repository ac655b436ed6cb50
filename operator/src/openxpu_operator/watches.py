"""Passes on operand changes, not on a timer.

The status follows the operands' DaemonSets, Jobs and pods, so the operator watches them
in its namespace (a server-side label selector: only its own objects) and asks for a pass
on every change, coalesced like node events (`Controller.kick`). A rollout that turns
ready is in the status a second later instead of at the next resync, which stays as the
safety net.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx

from openxpu_operator.kube import MANAGED_SELECTOR, ApiError, Kube

log = logging.getLogger(__name__)

OPERAND_COLLECTIONS = (
    "/apis/apps/v1/namespaces/{namespace}/daemonsets",
    "/apis/batch/v1/namespaces/{namespace}/jobs",
    "/api/v1/namespaces/{namespace}/pods",
)
# The server ends a watch after this long; it is then resumed from the last version seen.
WATCH_SECONDS = 300
RETRY_SECONDS = 2.0


async def kick_on_changes(kube: Kube, path: str, kick: Callable[[], None]) -> None:
    """Forever: watch one collection and kick on every change; list again (and kick, as
    changes may have been missed) when the watch expires or fails."""
    version = ""
    while True:
        try:
            if not version:
                version = await kube.list_version(path, MANAGED_SELECTOR)
                kick()
            async for event in kube.watch(path, MANAGED_SELECTOR, version, WATCH_SECONDS):
                if event.get("type") == "ERROR":  # 410 Gone: the version is too old
                    version = ""
                    break
                version = event["object"]["metadata"].get("resourceVersion", version)
                if event["type"] != "BOOKMARK":
                    kick()
        except (httpx.HTTPError, ApiError, ValueError, KeyError) as exc:
            log.warning("watching %s: %s; again in %.0fs", path, exc, RETRY_SECONDS)
            version = ""
            await asyncio.sleep(RETRY_SECONDS)


def watch_operands(
    kube: Kube, namespace: str, kick: Callable[[], None]
) -> list[asyncio.Task[None]]:
    """One background watch per operand collection."""
    return [
        asyncio.create_task(kick_on_changes(kube, path.format(namespace=namespace), kick))
        for path in OPERAND_COLLECTIONS
    ]
