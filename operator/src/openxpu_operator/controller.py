"""The controller: which policy is active, one reconcile pass at a time, status and Events.

Every trigger (a policy created, changed or resumed, the periodic resync, a node event)
runs the same idempotent `sync()`: list the policies, the oldest one is active (later ones
get state `ignored` and a ConflictingPolicy condition naming it), reconcile the active one
with the state manager, write each policy's status when it changed, and post an Event on
the policy whenever its state or reason changes. Passes never overlap (one lock), and node
events are coalesced so a thousand joining nodes cost a handful of passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from openxpu_operator import metrics
from openxpu_operator.cleanup import Progress, remove_cleanup_pods, uninstall_step
from openxpu_operator.kube import Kube, now
from openxpu_operator.manager import reconcile
from openxpu_operator.policy import (
    PolicyError,
    PolicyState,
    XPUClusterPolicy,
    XPUClusterPolicyStatus,
    load_policy,
)
from openxpu_operator.status import (
    CONFLICTING_POLICY,
    INVALID_SPEC,
    special_status,
    status_body,
)
from openxpu_operator.upgrade.rollout import with_upgrade

log = logging.getLogger(__name__)

JSON = dict[str, Any]
EVENTS_NAMESPACE = "default"  # where Events about cluster-scoped objects go
CLEANUP_NODES = "openxpu.io/cleanup-nodes"
# Node events closer together than this make one pass.
COALESCE_SECONDS = 1.0


@dataclass
class Settings:
    namespace: str = "openxpu"
    resync_seconds: float = 60.0
    cleanup_timeout: float = 120.0


def _age(policy: Mapping[str, Any]) -> tuple[str, str]:
    meta = policy["metadata"]
    return meta.get("creationTimestamp", ""), meta["name"]


def active_policy(policies: list[JSON]) -> JSON | None:
    """The oldest policy (by creation, then name) is the active one."""
    return min(policies, key=_age) if policies else None


def _ready_reason(status: Mapping[str, Any]) -> str:
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("reason", ""))
    return ""


def _without_private(status: Mapping[str, Any]) -> JSON:
    """Our part of a stored status (kopf may keep its own keys there)."""
    return {k: v for k, v in status.items() if k != "kopf"}


@dataclass
class Controller:
    kube: Kube
    settings: Settings = field(default_factory=Settings)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    wanted: asyncio.Event = field(default_factory=asyncio.Event)

    async def sync(self) -> None:
        """One pass over every policy; raises (for kopf to retry) when a pass fails."""
        async with self.lock:
            self.wanted.clear()
            started = time.monotonic()
            metrics.RECONCILES.inc()
            try:
                await self._sync()
            except Exception:
                metrics.FAILURES.inc()
                raise
            finally:
                metrics.DURATION.observe(time.monotonic() - started)

    def kick(self) -> None:
        """Ask for a pass soon (from a node event)."""
        self.wanted.set()

    async def run_kicks(self) -> None:
        """Background: one pass per burst of kicks."""
        while True:
            await self.wanted.wait()
            await asyncio.sleep(COALESCE_SECONDS)
            try:
                await self.sync()
            except Exception as exc:  # the next kick or resync retries
                log.warning("pass after node events failed: %s", exc)

    async def _sync(self) -> None:
        policies = await self.kube.policies()
        active = active_policy(policies)
        if active is None:
            return
        active_name = active["metadata"]["name"]
        for body in policies:
            body["metadata"]["name"]
            if body is active:
                continue
            message = (
                f"policy {active_name!r} is active (the oldest); this one is ignored until "
                "it is deleted"
            )
            status = special_status(
                body["metadata"].get("generation", 1),
                CONFLICTING_POLICY,
                message,
                self._conditions(body),
                now(),
                active=active_name,
            )
            await self._write(body, status)
        if active["metadata"].get("deletionTimestamp"):
            return  # the finalizer uninstalls it
        try:
            policy = load_policy(active)
        except PolicyError as exc:
            status = special_status(
                active["metadata"].get("generation", 1),
                INVALID_SPEC,
                str(exc),
                self._conditions(active),
                now(),
            )
            await self._write(active, status)
            return
        result = await reconcile(
            self.kube, policy, self.settings.namespace, self._conditions(active)
        )
        metrics.XPU_NODES.set(result.xpu_nodes)
        metrics.OPERANDS_READY.set(result.operands_ready)
        metrics.OPERANDS_ENABLED.set(sum(1 for o in result.status.operands if o.enabled))
        status = await with_upgrade(
            self.kube, policy, self.settings.namespace, result.status, active, now()
        )
        metrics.set_driver_upgrades(
            status.upgrade.counts if status.upgrade else {},
            auto_upgrade=policy.spec.driver.enabled
            and policy.spec.driver.upgrade_policy.auto_upgrade,
        )
        await self._write(active, status)

    @staticmethod
    def _conditions(body: Mapping[str, Any]) -> list[JSON]:
        conditions: list[JSON] = (body.get("status") or {}).get("conditions") or []
        return conditions

    async def _write(self, body: Mapping[str, Any], status: XPUClusterPolicyStatus) -> None:
        name = body["metadata"]["name"]
        new = status_body(status)
        old = _without_private(body.get("status") or {})
        metrics.set_policy_state(name, status.state)
        if old == new:
            return
        await self.kube.patch_policy_status(name, new)
        before = (old.get("state"), _ready_reason(old))
        after = (new["state"], _ready_reason(new))
        if before != after:
            ready = status.state is PolicyState.READY
            message = next((c.message for c in status.conditions if c.type == "Ready"), "")
            log.info("policy %s: %s (%s) %s", name, after[0], after[1], message)
            await self.kube.event(
                body,
                EVENTS_NAMESPACE,
                "Normal" if ready else "Warning",
                after[1],
                f"state {after[0]}: {message}",
            )

    async def uninstall(self, body: Mapping[str, Any], runtime: float) -> Progress:
        """One step of deleting a policy (the finalizer). Only the active policy owns
        anything; an ignored one just goes."""
        name = body["metadata"]["name"]
        async with self.lock:
            policies = await self.kube.policies()
            active = active_policy(policies)
            if active is None or active["metadata"]["name"] != name:
                metrics.forget_policy(name)
                return Progress(True)
            try:
                policy = load_policy(active)
            except PolicyError:
                # An invalid spec still owns what an earlier, valid one created.
                policy = XPUClusterPolicy(metadata=active["metadata"])
            annotations = body["metadata"].get("annotations") or {}
            former = [n for n in annotations.get(CLEANUP_NODES, "").split(",") if n]
            progress, former_now = await uninstall_step(
                self.kube, policy, self.settings.namespace, former
            )
            if former_now != former:
                await self.kube.merge_patch(
                    f"/apis/openxpu.io/v1/xpuclusterpolicies/{name}",
                    {"metadata": {"annotations": {CLEANUP_NODES: ",".join(former_now)}}},
                )
            if not progress.done and runtime >= self.settings.cleanup_timeout:
                nodes = ", ".join(progress.unclean_nodes) or "unknown nodes"
                message = (
                    f"gave up after {self.settings.cleanup_timeout:.0f}s waiting for "
                    f"{progress.waiting_for}: host files may remain on {nodes}"
                )
                log.warning("policy %s: %s", name, message)
                await self.kube.event(
                    body, EVENTS_NAMESPACE, "Warning", "CleanupIncomplete", message
                )
                await remove_cleanup_pods(self.kube, self.settings.namespace, name, force=True)
                progress = Progress(True, progress.waiting_for, progress.unclean_nodes)
            if progress.done:
                metrics.forget_policy(name)
                metrics.set_driver_upgrades({}, auto_upgrade=False)
            return progress
