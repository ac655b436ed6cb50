"""The operator's own metrics on /metrics (prometheus-client)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from openxpu_operator.policy import PolicyState
from openxpu_operator.upgrade.machine import IN_PROGRESS, State

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "openxpu_operator_reconciles", "Reconcile passes over the policies.", registry=REGISTRY
)
FAILURES = Counter(
    "openxpu_operator_reconcile_failures",
    "Reconcile passes that ended in an error (retried).",
    registry=REGISTRY,
)
DURATION = Histogram(
    "openxpu_operator_reconcile_duration_seconds",
    "Duration of a reconcile pass.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
XPU_NODES = Gauge(
    "openxpu_operator_xpu_nodes", "XPU nodes of the active policy.", registry=REGISTRY
)
OPERANDS_READY = Gauge(
    "openxpu_operator_operands_ready", "Ready operands of the active policy.", registry=REGISTRY
)
OPERANDS_ENABLED = Gauge(
    "openxpu_operator_operands_enabled", "Enabled operands of the active policy.", registry=REGISTRY
)
POLICY_STATE = Gauge(
    "openxpu_operator_policy_state",
    "1 for the state each policy is in (ready, notReady, ignored), else 0.",
    ["policy", "state"],
    registry=REGISTRY,
)
API_REQUESTS = Counter(
    "openxpu_operator_api_requests",
    "Requests the operator made to the API server.",
    registry=REGISTRY,
)


# The driver upgrade, set on each upgrade pass. Named after the GPU Operator's
# gpu_operator_nvidia_driver_upgrades_* gauges, so their alerts carry over; each is a count
# of XPU nodes of the active policy.
UPGRADE_NODES = Gauge(
    "openxpu_operator_driver_upgrade_nodes",
    "XPU nodes per driver upgrade state (node label openxpu.io/driver-upgrade-state).",
    ["state"],
    registry=REGISTRY,
)
UPGRADES_PENDING = Gauge(
    "openxpu_operator_driver_upgrades_pending",
    "XPU nodes whose driver is out of date, waiting for the rollout to take them.",
    registry=REGISTRY,
)
UPGRADES_IN_PROGRESS = Gauge(
    "openxpu_operator_driver_upgrades_in_progress",
    "XPU nodes being upgraded (cordon-required to uncordon-required).",
    registry=REGISTRY,
)
UPGRADES_DONE = Gauge(
    "openxpu_operator_driver_upgrades_done",
    "XPU nodes whose driver upgrade is done (upgrade-done).",
    registry=REGISTRY,
)
UPGRADES_FAILED = Gauge(
    "openxpu_operator_driver_upgrades_failed",
    "XPU nodes whose driver upgrade failed (upgrade-failed); the rollout holds while any is.",
    registry=REGISTRY,
)
AUTO_UPGRADE = Gauge(
    "openxpu_operator_driver_auto_upgrade_enabled",
    "1 if the active policy's driver.upgradePolicy.autoUpgrade is on, else 0.",
    registry=REGISTRY,
)


def set_driver_upgrades(counts: Mapping[str, int], *, auto_upgrade: bool) -> None:
    """`counts`: XPU nodes per upgrade state (status.upgrade.counts); empty: no upgrade."""
    for state in State:
        UPGRADE_NODES.labels(state.value).set(counts.get(state.value, 0))
    UPGRADES_PENDING.set(counts.get(State.UPGRADE_REQUIRED.value, 0))
    UPGRADES_IN_PROGRESS.set(sum(counts.get(s.value, 0) for s in IN_PROGRESS))
    UPGRADES_DONE.set(counts.get(State.UPGRADE_DONE.value, 0))
    UPGRADES_FAILED.set(counts.get(State.UPGRADE_FAILED.value, 0))
    AUTO_UPGRADE.set(1 if auto_upgrade else 0)


def set_policy_state(policy: str, state: PolicyState | None) -> None:
    for s in PolicyState:
        POLICY_STATE.labels(policy=policy, state=s.value).set(1 if s is state else 0)


def forget_policy(policy: str) -> None:
    for s in PolicyState:
        with contextlib.suppress(KeyError):
            POLICY_STATE.remove(policy, s.value)
