"""The operator's own metrics on /metrics (prometheus-client)."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from openxpu_operator.policy import PolicyState

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


def set_policy_state(policy: str, state: PolicyState | None) -> None:
    for s in PolicyState:
        POLICY_STATE.labels(policy=policy, state=s.value).set(1 if s is state else 0)


def forget_policy(policy: str) -> None:
    for s in PolicyState:
        with contextlib.suppress(KeyError):
            POLICY_STATE.remove(policy, s.value)
