"""The cluster-level planner: which upgrade-required nodes start now (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from openxpu_operator.policy import UpgradePolicySpec
from openxpu_operator.upgrade.machine import (
    SKIP_LABEL,
    STATE_LABEL,
    DriverPodView,
    NodeView,
    State,
)
from openxpu_operator.upgrade.planner import max_unavailable, plan

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
S = State


def policy(**data: Any) -> UpgradePolicySpec:
    return UpgradePolicySpec.model_validate(data)


def xpu_node(name: str, state: State | None = S.UPGRADE_REQUIRED, **kw: Any) -> NodeView:
    labels = {STATE_LABEL: state.value} if state else {}
    labels.update(kw.pop("labels", {}))
    return NodeView(
        name,
        labels,
        driver_pod=DriverPodView("openxpu", f"driver-{name}", "old"),
        desired_revision="new",
        **kw,
    )


def started(nodes: list[NodeView], p: UpgradePolicySpec) -> list[str]:
    steps = plan(nodes, p, NOW).steps
    return sorted(name for name, step in steps.items() if step.state is S.CORDON_REQUIRED)


def test_max_parallel_upgrades_bounds_the_nodes_started() -> None:
    nodes = [xpu_node(f"n{i}") for i in range(5)]
    assert started(nodes, policy(maxParallelUpgrades=2, maxUnavailable=5)) == ["n0", "n1"]


def test_nodes_in_progress_count_against_max_parallel_upgrades() -> None:
    nodes = [xpu_node("busy", S.POD_DELETION_REQUIRED), xpu_node("a"), xpu_node("b")]
    assert started(nodes, policy(maxParallelUpgrades=2, maxUnavailable=5)) == ["a"]
    assert started(nodes, policy(maxParallelUpgrades=1, maxUnavailable=5)) == []


def test_zero_max_parallel_upgrades_means_no_limit() -> None:
    nodes = [xpu_node(f"n{i}") for i in range(4)]
    assert len(started(nodes, policy(maxParallelUpgrades=0, maxUnavailable="100%"))) == 4


@pytest.mark.parametrize(
    ("value", "total", "expected"),
    [(2, 10, 2), ("25%", 10, 3), ("25%", 4, 1), ("10%", 3, 1), ("0%", 8, 0), ("100%", 7, 7)],
)
def test_max_unavailable_count_or_percent_rounded_up(
    value: int | str, total: int, expected: int
) -> None:
    assert max_unavailable(value, total) == expected


def test_max_unavailable_as_percent_bounds_the_nodes_started() -> None:
    nodes = [xpu_node(f"n{i}") for i in range(8)]
    assert len(started(nodes, policy(maxParallelUpgrades=0, maxUnavailable="25%"))) == 2


def test_already_unavailable_nodes_use_up_max_unavailable() -> None:
    nodes = [
        xpu_node("down", None, ready=False),
        xpu_node("a"),
        xpu_node("b"),
        xpu_node("c"),
    ]
    assert started(nodes, policy(maxParallelUpgrades=0, maxUnavailable=2)) == ["a"]


def test_an_already_cordoned_node_starts_first_and_costs_no_availability() -> None:
    nodes = [xpu_node("a"), xpu_node("z", unschedulable=True)]
    # maxUnavailable 1 is used up by z being cordoned, yet z may start: it loses nothing.
    assert started(nodes, policy(maxParallelUpgrades=1, maxUnavailable=1)) == ["z"]


def test_auto_upgrade_false_starts_nothing_and_says_so() -> None:
    result = plan([xpu_node("a")], policy(autoUpgrade=False), NOW)
    assert result.steps["a"].state is S.UPGRADE_REQUIRED
    assert result.steps["a"].reason == "waiting: autoUpgrade is false"


def test_auto_upgrade_false_still_marks_out_of_date_nodes_and_finishes_those_in_progress() -> None:
    nodes = [xpu_node("new", None), xpu_node("mid", S.CORDON_REQUIRED)]
    steps = plan(nodes, policy(autoUpgrade=False), NOW).steps
    assert steps["new"].state is S.UPGRADE_REQUIRED
    assert steps["mid"].state is S.WAIT_FOR_JOBS_REQUIRED


def test_a_failed_node_stops_the_rollout_from_taking_further_nodes() -> None:
    nodes = [xpu_node("bad", S.UPGRADE_FAILED), xpu_node("a"), xpu_node("b")]
    result = plan(nodes, policy(maxParallelUpgrades=0, maxUnavailable="100%"), NOW)
    assert all(result.steps[n].state is S.UPGRADE_REQUIRED for n in ("a", "b"))
    assert "node bad failed" in result.held and "node bad failed" in result.steps["a"].reason


def test_skipped_nodes_take_no_slot() -> None:
    nodes = [xpu_node("a", labels={SKIP_LABEL: "true"}), xpu_node("b")]
    assert started(nodes, policy(maxParallelUpgrades=1, maxUnavailable=2)) == ["b"]


def test_out_of_date_nodes_are_marked_upgrade_required_and_current_ones_left_alone() -> None:
    current = NodeView(
        "ok", driver_pod=DriverPodView("openxpu", "d", "new"), desired_revision="new"
    )
    steps = plan([xpu_node("old", None), current], policy(), NOW).steps
    assert steps["old"].state is S.UPGRADE_REQUIRED
    assert steps["ok"].state is None and not steps["ok"].annotate
