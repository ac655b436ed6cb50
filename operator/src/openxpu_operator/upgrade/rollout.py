"""The driver upgrade as the controller runs it: one pass per reconcile of the active
policy, published as `status.upgrade` and the conditions UpgradeInProgress / UpgradeFailed;
and what an uninstall removes of it from the nodes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from openxpu_operator.kube import NODES, Kube
from openxpu_operator.policy import (
    Condition,
    ConditionStatus,
    UpgradeNodeStatus,
    UpgradeSummary,
    XPUClusterPolicy,
    XPUClusterPolicyStatus,
)
from openxpu_operator.upgrade.executor import UpgradeStatus, reconcile_upgrades
from openxpu_operator.upgrade.machine import (
    FAILED_REVISION,
    FAILURE,
    IN_PROGRESS,
    INITIAL_UNSCHEDULABLE,
    LAST_ERROR,
    STATE_ENTERED_AT,
    STATE_LABEL,
    STUCK_REPORTED,
    State,
)

UPGRADE_IN_PROGRESS = "UpgradeInProgress"
UPGRADE_FAILED = "UpgradeFailed"
NODES_UPGRADING = "NodesUpgrading"
ROLLOUT_HELD = "RolloutHeld"
UP_TO_DATE = "DriverUpToDate"
NODE_UPGRADE_FAILED = "NodeUpgradeFailed"
NO_FAILURE = "NoFailure"
# How many nodes a condition message names before it says "and N more".
NAMED_NODES = 5
_WAITING = frozenset({State.UPGRADE_REQUIRED, *IN_PROGRESS})
_ANNOTATIONS = (
    INITIAL_UNSCHEDULABLE,
    STATE_ENTERED_AT,
    LAST_ERROR,
    FAILURE,
    FAILED_REVISION,
    STUCK_REPORTED,
)


def summary(result: UpgradeStatus) -> UpgradeSummary:
    status = result.as_status()
    return UpgradeSummary(
        # Every state, zeros included: the status is merge-patched, so a state left out
        # would keep an earlier pass's count.
        counts={state.value: status["counts"].get(state.value, 0) for state in State},
        nodes=[
            UpgradeNodeStatus(name=name, state=n["state"], reason=n["reason"])
            for name, n in status["nodes"].items()
            if n["state"]
        ],
        held=status["held"],
    )


def _named(nodes: Sequence[UpgradeNodeStatus]) -> str:
    text = "; ".join(f"{n.name} ({n.state}: {n.reason})" for n in nodes[:NAMED_NODES])
    return text + (f"; and {len(nodes) - NAMED_NODES} more" if len(nodes) > NAMED_NODES else "")


def conditions(
    upgrade: UpgradeSummary, previous: Sequence[Mapping[str, Any]], generation: int, now: str
) -> list[Condition]:
    """UpgradeInProgress and UpgradeFailed; their messages name the nodes and why."""
    waiting = [n for n in upgrade.nodes if n.state in _WAITING]
    failed = [n for n in upgrade.nodes if n.state == State.UPGRADE_FAILED]
    started = [n for n in waiting if n.state != State.UPGRADE_REQUIRED]
    if started or (waiting and not upgrade.held):
        progress = (True, NODES_UPGRADING, f"{len(waiting)} node(s) to go: {_named(waiting)}")
    elif waiting:
        progress = (True, ROLLOUT_HELD, f"{upgrade.held}; waiting: {_named(waiting)}")
    else:
        progress = (False, UP_TO_DATE, "no XPU node waits for a driver upgrade")
    failure = (True, NODE_UPGRADE_FAILED, _named(failed)) if failed else (False, NO_FAILURE, "")
    out = []
    for kind, (ok, reason, message) in (
        (UPGRADE_IN_PROGRESS, progress),
        (UPGRADE_FAILED, failure),
    ):
        status = ConditionStatus.TRUE if ok else ConditionStatus.FALSE
        before = next((c for c in previous if c.get("type") == kind), {})
        moved = before.get("status") != status.value
        out.append(
            Condition(
                type=kind,
                status=status,
                reason=reason,
                message=message,
                observed_generation=generation,
                last_transition_time=now if moved else str(before.get("lastTransitionTime") or now),
            )
        )
    return out


async def with_upgrade(
    kube: Kube,
    policy: XPUClusterPolicy,
    namespace: str,
    status: XPUClusterPolicyStatus,
    body: Mapping[str, Any],
    now: str,
) -> XPUClusterPolicyStatus:
    """One upgrade pass for the active policy (`body`, which gets the Events); `status`
    with the upgrade's part added. Nothing when the policy deploys no driver."""
    if not policy.spec.driver.enabled:
        return status
    result = await reconcile_upgrades(
        kube, policy.spec.driver.upgrade_policy, namespace, events_on=body
    )
    upgrade = summary(result)
    previous = (body.get("status") or {}).get("conditions") or []
    generation = policy.metadata.get("generation", 1)
    return status.model_copy(
        update={
            "upgrade": upgrade,
            "conditions": [*status.conditions, *conditions(upgrade, previous, generation, now)],
        }
    )


async def forget_upgrade(kube: Kube, node: Mapping[str, Any]) -> None:
    """On uninstall: remove the upgrade's label and annotations from a node (an admin's
    skip label stays), and uncordon it if the upgrade had cordoned it."""
    meta = node["metadata"]
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    path = f"{NODES}/{meta['name']}"
    ours = [k for k in _ANNOTATIONS if k in notes]
    if STATE_LABEL not in labels and not ours:
        return
    cordoned_by_us = (
        labels.get(STATE_LABEL) in {s.value for s in (*IN_PROGRESS, State.UPGRADE_FAILED)}
        and notes.get(INITIAL_UNSCHEDULABLE) == "false"
        and bool((node.get("spec") or {}).get("unschedulable"))
    )
    if cordoned_by_us:
        await kube.merge_patch(path, {"spec": {"unschedulable": False}})
    patch: dict[str, Any] = {"annotations": dict.fromkeys(ours)}
    if STATE_LABEL in labels:
        patch["labels"] = {STATE_LABEL: None}
    await kube.merge_patch(path, {"metadata": patch})
