"""The controller's side of the driver upgrade (pure parts): when a pass has work, and the
status and conditions it publishes."""

from __future__ import annotations

from typing import Any

import pytest

from openxpu_operator.policy import UpgradeNodeStatus, UpgradeSummary
from openxpu_operator.upgrade.executor import NodeReport, UpgradeStatus, rollout_pending
from openxpu_operator.upgrade.machine import STATE_LABEL
from openxpu_operator.upgrade.rollout import conditions, summary

pytestmark = pytest.mark.unit

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def ds(generation: int = 2, **status: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


def node(state: str | None = None) -> dict[str, Any]:
    return {"metadata": {"labels": {STATE_LABEL: state} if state else {}}}


def test_a_settled_cluster_needs_no_pass() -> None:
    settled = ds(observedGeneration=2, desiredNumberScheduled=3, updatedNumberScheduled=3)
    assert not rollout_pending([node(), node("upgrade-done")], [settled])


@pytest.mark.parametrize(
    "daemonset",
    [
        ds(observedGeneration=1, desiredNumberScheduled=3, updatedNumberScheduled=3),
        ds(observedGeneration=2, desiredNumberScheduled=3, updatedNumberScheduled=2),
        ds(),  # just created: its controller has not looked at it yet
    ],
)
def test_a_driver_daemonset_not_on_its_template_needs_a_pass(daemonset: dict[str, Any]) -> None:
    assert rollout_pending([node()], [daemonset])


@pytest.mark.parametrize("state", ["upgrade-required", "drain-required", "upgrade-failed"])
def test_a_node_mid_walk_or_failed_needs_a_pass(state: str) -> None:
    settled = ds(observedGeneration=2, desiredNumberScheduled=1, updatedNumberScheduled=1)
    assert rollout_pending([node(state)], [settled])


def test_counts_name_every_state_so_a_merge_patch_drops_old_ones() -> None:
    result = UpgradeStatus(
        {"a": NodeReport("upgrade-done", ""), "b": NodeReport("drain-required", "draining")}
    )
    out = summary(result)
    assert out.counts["upgrade-done"] == 1 and out.counts["cordon-required"] == 0
    assert out.nodes == [UpgradeNodeStatus(name="b", state="drain-required", reason="draining")]


def _by_type(upgrade: UpgradeSummary, previous: list[dict[str, Any]] | None = None) -> Any:
    return {c.type: c for c in conditions(upgrade, previous or [], 4, T1)}


def test_conditions_name_the_nodes_upgrading_and_failed() -> None:
    upgrade = UpgradeSummary(
        nodes=[
            UpgradeNodeStatus(name="n1", state="pod-deletion-required", reason="PDB x blocks"),
            UpgradeNodeStatus(name="n2", state="upgrade-failed", reason="driver crashed"),
        ]
    )
    got = _by_type(upgrade)
    progress, failed = got["UpgradeInProgress"], got["UpgradeFailed"]
    assert (progress.status, progress.reason) == ("True", "NodesUpgrading")
    assert "n1 (pod-deletion-required: PDB x blocks)" in progress.message
    assert (failed.status, failed.reason) == ("True", "NodeUpgradeFailed")
    assert failed.message == "n2 (upgrade-failed: driver crashed)"


def test_a_held_rollout_says_why_and_a_done_one_is_false() -> None:
    held = UpgradeSummary(
        nodes=[UpgradeNodeStatus(name="n3", state="upgrade-required", reason="waiting")],
        held="node n2 failed its upgrade",
    )
    progress = _by_type(held)["UpgradeInProgress"]
    assert progress.reason == "RolloutHeld" and progress.message.startswith("node n2 failed")
    done = _by_type(UpgradeSummary())
    assert (done["UpgradeInProgress"].status, done["UpgradeFailed"].status) == ("False", "False")


def test_transition_time_moves_only_with_the_status() -> None:
    before = [{"type": "UpgradeFailed", "status": "False", "lastTransitionTime": T0}]
    assert _by_type(UpgradeSummary(), before)["UpgradeFailed"].last_transition_time == T0
    failed = UpgradeSummary(nodes=[UpgradeNodeStatus(name="n", state="upgrade-failed")])
    assert _by_type(failed, before)["UpgradeFailed"].last_transition_time == T1
