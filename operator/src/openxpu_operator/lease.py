"""Leader election with a coordination.k8s.io Lease, so two replicas never act at once.

A replica acts only while it holds the Lease: it takes it when free or expired (by an
optimistic-concurrency update, so of two racing replicas one gets a 409 and waits), renews
it every third of its duration, and stops acting the moment a renewal fails past the
deadline. kopf's own peering would need its own CRDs; a Lease is what Kubernetes
controllers use.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Mapping
from typing import Any

from openxpu_operator.kube import ApiError, Kube

log = logging.getLogger(__name__)

MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def _micro(when: datetime.datetime) -> str:
    return when.strftime(MICRO)


def _parse(text: str) -> datetime.datetime:
    return datetime.datetime.strptime(text, MICRO).replace(tzinfo=datetime.UTC)


def expired(spec: Mapping[str, Any], now: datetime.datetime) -> bool:
    """Whether a Lease held by someone else may be taken over."""
    holder = spec.get("holderIdentity")
    renewed = spec.get("renewTime")
    if not holder or not renewed:
        return True
    duration = datetime.timedelta(seconds=int(spec.get("leaseDurationSeconds") or 15))
    return _parse(renewed) + duration < now


class LeaseElector:
    def __init__(
        self, kube: Kube, namespace: str, name: str, identity: str, duration: int = 15
    ) -> None:
        self.kube = kube
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.duration = duration

    def _spec(self, now: datetime.datetime, acquired: str | None = None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "acquireTime": acquired or _micro(now),
            "renewTime": _micro(now),
        }

    async def try_acquire(self) -> bool:
        """Take or renew the Lease once; True when this replica holds it."""
        now = datetime.datetime.now(datetime.UTC)
        lease = await self.kube.get(self.path)
        if lease is None:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(now),
            }
            return await self.kube.create(self.collection, body) is not None
        spec = lease.get("spec") or {}
        mine = spec.get("holderIdentity") == self.identity
        if not mine and not expired(spec, now):
            return False
        lease["spec"] = self._spec(now, spec.get("acquireTime") if mine else None)
        try:
            await self.kube.replace(self.path, lease)  # carries resourceVersion: 409 on a race
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def acquire(self) -> None:
        """Wait until this replica holds the Lease."""
        announced = False
        while not await self.try_acquire():
            if not announced:
                log.info(
                    "waiting for the lease %s/%s held by another replica", self.namespace, self.name
                )
                announced = True
            await asyncio.sleep(self.duration / 3)
        log.info("holding the lease %s/%s as %s", self.namespace, self.name, self.identity)

    async def keep(self, lost: asyncio.Event) -> None:
        """Renew until a renewal fails past the lease duration; then set `lost`."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.duration / 3)
            held: bool | None = None
            try:
                held = await self.try_acquire()
            except (ApiError, OSError) as exc:
                log.warning("lease renewal failed: %s", exc)
            if held:
                last = time.monotonic()
                continue
            # Taken by another replica, or not renewed in time: it may be taken any moment.
            if held is False or time.monotonic() - last > self.duration * 2 / 3:
                log.error("lost the lease %s/%s: stopping", self.namespace, self.name)
                lost.set()
                return

    async def release(self) -> None:
        """Give the Lease up on a clean stop, so another replica takes over at once."""
        lease = await self.kube.get(self.path)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            lease["spec"]["holderIdentity"] = None
            try:
                await self.kube.replace(self.path, lease)
            except ApiError as exc:
                log.warning("could not release the lease: %s", exc)
