"""The cluster-level planner: which upgrade-required nodes may start now (pure).

Like NVIDIA's ClusterUpgradeStateManager: the slots are the smaller of what
maxParallelUpgrades leaves (nodes in progress count against it) and what maxUnavailable
leaves (every unavailable XPU node counts: cordoned, not Ready, or in progress). A node that
is unavailable already takes no maxUnavailable slot, since upgrading it makes nothing
worse. autoUpgrade=false starts nothing, and neither does a rollout with a failed node:
a driver that failed on one node is not taken to the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from openxpu_operator.policy import UpgradePolicySpec
from openxpu_operator.upgrade.machine import IN_PROGRESS, NodeView, State, Step, transition


def max_unavailable(value: int | str, total: int) -> int:
    """A count, or a percentage of `total` rounded up (as Kubernetes scales IntOrString)."""
    if isinstance(value, int):
        return value
    return math.ceil(total * int(value.rstrip("%")) / 100)


def unavailable(node: NodeView) -> bool:
    return node.unschedulable or not node.ready or node.state in IN_PROGRESS


@dataclass(frozen=True)
class Plan:
    steps: dict[str, Step]  # node name -> its step this pass
    slots: int  # nodes that could still start after this pass
    held: str  # why upgrade-required nodes wait, "" when none do


def plan(nodes: Sequence[NodeView], policy: UpgradePolicySpec, now: float) -> Plan:
    in_progress = sum(1 for n in nodes if n.state in IN_PROGRESS)
    down = sum(1 for n in nodes if unavailable(n))
    parallel_left = (
        policy.max_parallel_upgrades - in_progress if policy.max_parallel_upgrades else len(nodes)
    )
    unavailable_left = max_unavailable(policy.max_unavailable, len(nodes)) - down
    failed = sorted(n.name for n in nodes if n.state is State.UPGRADE_FAILED)
    held = ""
    if not policy.auto_upgrade:
        held = "autoUpgrade is false"
    elif failed:
        held = f"node {failed[0]} failed its upgrade; the rollout takes no further node"
    steps: dict[str, Step] = {}
    # Nodes that are unavailable anyway go first: they cost no availability.
    for node in sorted(nodes, key=lambda n: (not unavailable(n), n.name)):
        may_start = False
        if node.state is State.UPGRADE_REQUIRED and not node.skipped and not held:
            free = not unavailable(node)
            if parallel_left > 0 and (unavailable_left > 0 or not free):
                may_start = True
                parallel_left -= 1
                unavailable_left -= 1 if free else 0
        step = transition(node, policy, now, may_start=may_start)
        if step.state is State.UPGRADE_REQUIRED and node.state is State.UPGRADE_REQUIRED and held:
            step = Step(step.state, f"waiting: {held}", annotate=step.annotate)
        steps[node.name] = step
    return Plan(steps, max(0, min(parallel_left, unavailable_left)), held)
