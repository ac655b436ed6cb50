"""The per-node driver upgrade state machine: every transition as a pure function."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from openxpu_operator.policy import UpgradePolicySpec
from openxpu_operator.upgrade.machine import (
    FAILED_REVISION,
    FAILURE,
    INITIAL_UNSCHEDULABLE,
    LAST_ERROR,
    MAX_DRIVER_RESTARTS,
    SKIP_LABEL,
    STATE_ENTERED_AT,
    STATE_LABEL,
    STUCK_AFTER_SECONDS,
    STUCK_REPORTED,
    DriverPodView,
    NodeView,
    PodView,
    State,
    stamp,
    transition,
)
from openxpu_runtime.errors import SELF_TEST_FAILED_EXIT

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0
OLD, NEW = "rev-old", "rev-new"
S = State


def policy(data: dict[str, Any] | None = None) -> UpgradePolicySpec:
    return UpgradePolicySpec.model_validate(data or {})


def driver(revision: str = OLD, **kw: Any) -> DriverPodView:
    return DriverPodView("openxpu", "driver-a", revision, **kw)


def workload(name: str = "burn", **kw: Any) -> PodView:
    kw = {"uses_xpu": True, "controller_kind": "ReplicaSet", **kw}
    return PodView("team", name, **kw)


def node(
    state: State | None,
    *,
    waited: float | None = None,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **kw: Any,
) -> NodeView:
    notes = dict(annotations or {})
    if waited is not None:
        notes[STATE_ENTERED_AT] = stamp(NOW - waited)
    all_labels = {STATE_LABEL: state.value} if state else {}
    all_labels.update(labels or {})
    kw.setdefault("driver_pod", driver())
    kw.setdefault("desired_revision", NEW)
    return NodeView("node-a", all_labels, notes, **kw)


# -- marking and starting --------------------------------------------------------------


@pytest.mark.parametrize("state", [None, S.UPGRADE_DONE])
def test_an_out_of_date_driver_pod_marks_the_node_upgrade_required(state: State | None) -> None:
    step = transition(node(state), policy(), NOW)
    assert step.state is S.UPGRADE_REQUIRED
    assert step.annotate[STATE_ENTERED_AT] == stamp(NOW)


@pytest.mark.parametrize("state", [None, S.UPGRADE_DONE])
def test_a_current_driver_pod_changes_nothing(state: State | None) -> None:
    step = transition(node(state, driver_pod=driver(NEW)), policy(), NOW)
    assert (step.state, step.annotate, step.cordon, step.evict) == (state, {}, None, ())


def test_upgrade_required_waits_for_the_planners_slot_then_starts() -> None:
    assert transition(node(S.UPGRADE_REQUIRED), policy(), NOW).state is S.UPGRADE_REQUIRED
    step = transition(node(S.UPGRADE_REQUIRED), policy(), NOW, may_start=True)
    assert step.state is S.CORDON_REQUIRED


def test_upgrade_required_whose_driver_became_current_is_done() -> None:
    step = transition(node(S.UPGRADE_REQUIRED, driver_pod=driver(NEW)), policy(), NOW)
    assert step.state is S.UPGRADE_DONE


def test_skip_label_keeps_a_node_out_of_the_upgrade() -> None:
    skipped = node(None, labels={SKIP_LABEL: "true"})
    step = transition(skipped, policy(), NOW, may_start=True)
    assert step.state is None and "skipped" in step.reason and not step.annotate
    required = node(S.UPGRADE_REQUIRED, labels={SKIP_LABEL: "true"})
    assert transition(required, policy(), NOW, may_start=True).state is S.UPGRADE_REQUIRED


def test_skip_label_on_a_node_mid_walk_lets_it_finish_rather_than_stay_cordoned() -> None:
    mid = node(S.UNCORDON_REQUIRED, labels={SKIP_LABEL: "true"}, unschedulable=True)
    step = transition(mid, policy(), NOW)
    assert (step.state, step.cordon) == (S.UPGRADE_DONE, False)


# -- cordon ---------------------------------------------------------------------------


def test_cordon_records_the_schedulable_initial_state_then_cordons() -> None:
    step = transition(node(S.CORDON_REQUIRED), policy(), NOW)
    assert step.state is S.WAIT_FOR_JOBS_REQUIRED
    assert step.cordon is True
    assert step.annotate[INITIAL_UNSCHEDULABLE] == "false"


def test_a_node_cordoned_before_the_upgrade_is_recorded_so() -> None:
    step = transition(node(S.CORDON_REQUIRED, unschedulable=True), policy(), NOW)
    assert step.cordon is None
    assert step.annotate[INITIAL_UNSCHEDULABLE] == "true"


def test_cordon_resumed_after_our_own_cordon_keeps_the_first_record() -> None:
    # Cut short after the cordon and before the label: the record must not become "true".
    resumed = node(
        S.CORDON_REQUIRED, unschedulable=True, annotations={INITIAL_UNSCHEDULABLE: "false"}
    )
    step = transition(resumed, policy(), NOW)
    assert INITIAL_UNSCHEDULABLE not in step.annotate
    assert step.state is S.WAIT_FOR_JOBS_REQUIRED


# -- wait for jobs ------------------------------------------------------------------------

JOBS = {"waitForCompletion": {"podSelector": "app=train", "timeoutSeconds": 600}}


def test_no_job_selector_goes_straight_to_pod_deletion() -> None:
    step = transition(node(S.WAIT_FOR_JOBS_REQUIRED), policy(), NOW)
    assert step.state is S.POD_DELETION_REQUIRED


def test_a_running_job_is_waited_for_with_the_time_in_the_reason() -> None:
    job = workload("x", labels={"app": "train"}, controller_kind="Job")
    step = transition(node(S.WAIT_FOR_JOBS_REQUIRED, waited=120, pods=(job,)), policy(JOBS), NOW)
    assert step.state is S.WAIT_FOR_JOBS_REQUIRED
    assert step.reason == "waiting for job team/x to complete (120 s of 600)"
    assert not step.evict


def test_a_finished_job_or_an_unselected_pod_is_not_waited_for() -> None:
    pods = (
        workload("x", labels={"app": "train"}, finished=True),
        workload("y", labels={"app": "serve"}),
    )
    step = transition(node(S.WAIT_FOR_JOBS_REQUIRED, waited=5, pods=pods), policy(JOBS), NOW)
    assert step.state is S.POD_DELETION_REQUIRED


def test_a_job_past_the_timeout_fails_the_node_rather_than_being_cut_short() -> None:
    job = workload("x", labels={"app": "train"})
    step = transition(node(S.WAIT_FOR_JOBS_REQUIRED, waited=601, pods=(job,)), policy(JOBS), NOW)
    assert step.state is S.UPGRADE_FAILED
    assert step.annotate[FAILURE] == "jobs team/x still running after 600 s"
    assert not step.evict


# -- pod deletion -------------------------------------------------------------------------


def test_xpu_pods_are_evicted_and_other_pods_left_alone() -> None:
    pods = (workload("burn"), workload("web", uses_xpu=False))
    step = transition(node(S.POD_DELETION_REQUIRED, waited=10, pods=pods), policy(), NOW)
    assert step.state is S.POD_DELETION_REQUIRED
    assert [p.name for p in step.evict] == ["burn"]
    assert "team/burn" in step.reason and "10 s of 300" in step.reason


def test_a_terminating_pod_is_waited_for_not_evicted_again() -> None:
    pods = (workload("burn", terminating=True),)
    step = transition(node(S.POD_DELETION_REQUIRED, waited=10, pods=pods), policy(), NOW)
    assert step.state is S.POD_DELETION_REQUIRED and step.evict == ()


def test_no_xpu_pods_left_moves_on_to_drain() -> None:
    pods = (workload("done", finished=True), workload("web", uses_xpu=False))
    step = transition(node(S.POD_DELETION_REQUIRED, pods=pods), policy(), NOW)
    assert step.state is S.DRAIN_REQUIRED


def test_a_pdb_blocking_beyond_the_timeout_fails_the_node_naming_the_pdb() -> None:
    blocked = (
        "eviction of team/burn refused: "
        "Cannot evict pod as it would violate the pod's disruption budget."
    )
    stuck = node(
        S.POD_DELETION_REQUIRED, waited=301, pods=(workload(),), annotations={LAST_ERROR: blocked}
    )
    step = transition(stuck, policy(), NOW)
    assert step.state is S.UPGRADE_FAILED
    assert "after 300 s" in step.reason and "disruption budget" in step.reason
    assert step.evict == () and step.delete == ()


def test_a_pdb_blocking_within_the_timeout_keeps_evicting_and_says_why() -> None:
    stuck = node(
        S.POD_DELETION_REQUIRED, waited=30, pods=(workload(),), annotations={LAST_ERROR: "PDB x"}
    )
    step = transition(stuck, policy(), NOW)
    assert step.state is S.POD_DELETION_REQUIRED and step.reason.endswith("; PDB x")
    assert [p.name for p in step.evict] == ["burn"]


def test_a_pod_without_a_controller_fails_the_node_unless_force() -> None:
    bare = node(S.POD_DELETION_REQUIRED, pods=(workload(controller_kind=None),))
    step = transition(bare, policy(), NOW)
    assert step.state is S.UPGRADE_FAILED and "not managed by a controller" in step.reason
    forced = transition(bare, policy({"podDeletion": {"force": True}}), NOW)
    assert forced.state is S.POD_DELETION_REQUIRED and len(forced.evict) == 1


def test_a_pod_with_empty_dir_fails_the_node_unless_delete_empty_dir() -> None:
    scratch = node(S.POD_DELETION_REQUIRED, pods=(workload(empty_dir=True),))
    assert transition(scratch, policy(), NOW).state is S.UPGRADE_FAILED
    allowed = transition(scratch, policy({"podDeletion": {"deleteEmptyDir": True}}), NOW)
    assert len(allowed.evict) == 1


def test_timeout_zero_waits_forever() -> None:
    stuck = node(S.POD_DELETION_REQUIRED, waited=10**6, pods=(workload(),))
    step = transition(stuck, policy({"podDeletion": {"timeoutSeconds": 0}}), NOW)
    assert step.state is S.POD_DELETION_REQUIRED and "no timeout" in step.reason


# -- drain ----------------------------------------------------------------------------------

DRAIN = {"drain": {"enable": True, "timeoutSeconds": 60}}


def test_drain_disabled_goes_to_pod_restart() -> None:
    step = transition(node(S.DRAIN_REQUIRED, pods=(workload("web"),)), policy(), NOW)
    assert step.state is S.POD_RESTART_REQUIRED and step.evict == ()


def test_drain_evicts_selected_pods_but_not_daemonset_pods() -> None:
    pods = (
        workload("web", uses_xpu=False),
        workload("exporter", uses_xpu=False, controller_kind="DaemonSet"),
        workload("db", uses_xpu=False, labels={"keep": "yes"}),
    )
    spec = {"drain": {"enable": True, "podSelector": "keep!=yes"}}
    step = transition(node(S.DRAIN_REQUIRED, pods=pods), policy(spec), NOW)
    assert [p.name for p in step.evict] == ["web"]


def test_drain_done_goes_to_pod_restart_and_a_stuck_drain_fails() -> None:
    only_ds = (workload("exporter", controller_kind="DaemonSet"),)
    assert transition(node(S.DRAIN_REQUIRED, pods=only_ds), policy(DRAIN), NOW).state is (
        S.POD_RESTART_REQUIRED
    )
    stuck = node(S.DRAIN_REQUIRED, waited=61, pods=(workload("web", uses_xpu=False),))
    step = transition(stuck, policy(DRAIN), NOW)
    assert step.state is S.UPGRADE_FAILED and step.reason.startswith("drain:")


# -- driver restart, validation, uncordon ------------------------------------------------


def test_pod_restart_deletes_the_out_of_date_driver_pod() -> None:
    step = transition(node(S.POD_RESTART_REQUIRED), policy(), NOW)
    assert step.state is S.POD_RESTART_REQUIRED
    assert [d.name for d in step.delete] == ["driver-a"]
    assert "rev-old" in step.reason and "rev-new" in step.reason


@pytest.mark.parametrize("pod", [None, driver(terminating=True)])
def test_pod_restart_waits_for_the_daemonset_to_make_the_new_pod(
    pod: DriverPodView | None,
) -> None:
    step = transition(node(S.POD_RESTART_REQUIRED, driver_pod=pod), policy(), NOW)
    assert step.state is S.POD_RESTART_REQUIRED and step.delete == ()


def test_pod_restart_with_the_new_pod_goes_to_validation() -> None:
    step = transition(node(S.POD_RESTART_REQUIRED, driver_pod=driver(NEW)), policy(), NOW)
    assert step.state is S.VALIDATION_REQUIRED


def test_validation_waits_for_a_ready_driver_then_uncordons() -> None:
    pending = transition(node(S.VALIDATION_REQUIRED, driver_pod=driver(NEW)), policy(), NOW)
    assert pending.state is S.VALIDATION_REQUIRED and "validation pending" in pending.reason
    ready = driver(NEW, ready=True)
    assert transition(node(S.VALIDATION_REQUIRED, driver_pod=ready), policy(), NOW).state is (
        S.UNCORDON_REQUIRED
    )


@pytest.mark.parametrize("state", [S.POD_RESTART_REQUIRED, S.VALIDATION_REQUIRED])
def test_a_driver_restarting_too_often_fails_the_node(state: State) -> None:
    crashing = driver(NEW, restarts=MAX_DRIVER_RESTARTS + 1)
    step = transition(node(state, driver_pod=crashing), policy(), NOW)
    assert step.state is S.UPGRADE_FAILED and "restarted 6 times" in step.reason


SELF_TEST = "xpud: driver 0.3.0-faulty failed its start-up self-test: ..."


@pytest.mark.parametrize("state", [S.POD_RESTART_REQUIRED, S.VALIDATION_REQUIRED])
def test_a_driver_that_fails_its_self_test_fails_the_node_at_once_with_its_words(
    state: State,
) -> None:
    # One exit 3 is enough: the build fails its self-test on every start, and the crash
    # loop's back-off would take ~10 minutes to reach the restart limit.
    bad = driver(NEW, restarts=1, last_exit=SELF_TEST_FAILED_EXIT, last_words=SELF_TEST)
    step = transition(node(state, driver_pod=bad), policy(), NOW)
    assert step.state is S.UPGRADE_FAILED
    assert (
        step.reason
        == f"driver pod openxpu/driver-a failed its start-up self-test (exit 3): {SELF_TEST}"
    )
    assert step.annotate[FAILURE] == step.reason and step.annotate[FAILED_REVISION] == NEW


def test_another_crash_waits_for_the_restart_limit_and_names_the_last_exit() -> None:
    # e.g. the old xpud still holds the state lock for a moment: a restart may cure it.
    words = "xpud: another xpud (pid 7) holds /var/lib/openxpu/xpud.lock; stop it first"
    crashing = driver(NEW, restarts=1, last_exit=2, last_words=words)
    step = transition(node(S.VALIDATION_REQUIRED, driver_pod=crashing), policy(), NOW)
    assert step.state is S.VALIDATION_REQUIRED
    limit = replace(crashing, restarts=MAX_DRIVER_RESTARTS + 1)
    step = transition(node(S.VALIDATION_REQUIRED, driver_pod=limit), policy(), NOW)
    assert step.state is S.UPGRADE_FAILED
    assert step.reason.endswith(f"restarted 6 times; last exit 2: {words}")


def test_uncordon_gives_back_a_node_we_cordoned() -> None:
    ours = node(
        S.UNCORDON_REQUIRED, unschedulable=True, annotations={INITIAL_UNSCHEDULABLE: "false"}
    )
    step = transition(ours, policy(), NOW)
    assert (step.state, step.cordon) == (S.UPGRADE_DONE, False)
    assert step.annotate[INITIAL_UNSCHEDULABLE] is None


def test_uncordon_never_uncordons_a_node_that_was_cordoned_before() -> None:
    theirs = node(
        S.UNCORDON_REQUIRED, unschedulable=True, annotations={INITIAL_UNSCHEDULABLE: "true"}
    )
    step = transition(theirs, policy(), NOW)
    assert (step.state, step.cordon) == (S.UPGRADE_DONE, None)
    assert "left unschedulable" in step.reason


# -- failed and recovery ----------------------------------------------------------------------


def test_a_failed_node_stays_failed_with_its_reason() -> None:
    failed = node(S.UPGRADE_FAILED, annotations={FAILURE: "jobs team/x still running"})
    step = transition(failed, policy(), NOW)
    assert (step.state, step.reason, step.cordon) == (
        S.UPGRADE_FAILED,
        "jobs team/x still running",
        None,
    )


def test_a_failed_node_recovers_when_its_driver_is_current_and_ready_again() -> None:
    # e.g. driver.version rolled back: the DaemonSet's revision is the pod's again.
    failed = node(S.UPGRADE_FAILED, annotations={FAILURE: "x"}, desired_revision=OLD)
    step = transition(replace(failed, driver_pod=driver(OLD, ready=True)), policy(), NOW)
    assert step.state is S.UNCORDON_REQUIRED
    assert step.annotate[FAILURE] is None


def test_a_failing_node_records_the_revision_it_failed_to_reach() -> None:
    crashing = node(S.VALIDATION_REQUIRED, driver_pod=driver(NEW, restarts=9))
    step = transition(crashing, policy(), NOW)
    assert step.state is S.UPGRADE_FAILED and step.annotate[FAILED_REVISION] == NEW


def test_a_failed_node_walks_again_when_the_wanted_driver_changes() -> None:
    # The new driver crashed; driver.version rolled back: the crashing pod is not current
    # (OnDelete replaces nothing by itself), so the node must be walked again, from the
    # pod deletion as it is still cordoned.
    failed = node(
        S.UPGRADE_FAILED,
        annotations={FAILURE: "driver pod crashed", FAILED_REVISION: NEW},
        driver_pod=driver(NEW, restarts=9),
        desired_revision=OLD,
    )
    step = transition(failed, policy(), NOW)
    assert step.state is S.POD_DELETION_REQUIRED and "upgrading again" in step.reason
    assert step.annotate[FAILURE] is None and step.annotate[FAILED_REVISION] is None
    # Still the revision it failed on: it stays failed, it does not retry in a loop.
    same = transition(replace(failed, desired_revision=NEW), policy(), NOW)
    assert same.state is S.UPGRADE_FAILED


def test_a_crash_looping_old_driver_is_replaced_not_a_failure() -> None:
    # The walk after a rollback: the pod being replaced is the bad one, crash-looping.
    rolled_back = node(
        S.POD_RESTART_REQUIRED, driver_pod=driver(NEW, restarts=9), desired_revision=OLD
    )
    step = transition(rolled_back, policy(), NOW)
    assert step.state is S.POD_RESTART_REQUIRED and step.delete == (rolled_back.driver_pod,)


def test_every_transition_stamps_the_entry_time_and_clears_the_last_error() -> None:
    step = transition(node(S.POD_DELETION_REQUIRED, annotations={LAST_ERROR: "old"}), policy(), NOW)
    assert step.state is S.DRAIN_REQUIRED
    assert step.annotate[STATE_ENTERED_AT] == stamp(NOW) and step.annotate[LAST_ERROR] is None


WALK = [
    S.UPGRADE_REQUIRED,
    S.CORDON_REQUIRED,
    S.WAIT_FOR_JOBS_REQUIRED,
    S.POD_DELETION_REQUIRED,
    S.DRAIN_REQUIRED,
    S.POD_RESTART_REQUIRED,
    S.VALIDATION_REQUIRED,
    S.UNCORDON_REQUIRED,
    S.UPGRADE_DONE,
]


def world_after(n: NodeView, step: Any) -> NodeView:
    """The node as the cluster would show it once the step is applied (evicted pods gone,
    a deleted driver pod replaced by a ready one of the new revision)."""
    notes = {**n.annotations, **step.annotate}
    gone = {p.ref for p in step.evict}
    return replace(
        n,
        labels={**n.labels, STATE_LABEL: step.state.value},
        annotations={k: v for k, v in notes.items() if v is not None},
        unschedulable=n.unschedulable if step.cordon is None else step.cordon,
        pods=tuple(p for p in n.pods if p.ref not in gone),
        driver_pod=driver(NEW, ready=True) if step.delete else n.driver_pod,
    )


@pytest.mark.parametrize("start", WALK[:-1])
def test_resume_from_each_state_walks_the_rest_of_the_way(start: State) -> None:
    """A fresh operator needs only the node: from any state it walks the remaining states
    in order to upgrade-done, uncordoned, with no annotation of ours left but the stamp."""
    n = node(start, pods=(workload(),), annotations={INITIAL_UNSCHEDULABLE: "false"})
    if WALK.index(start) > WALK.index(S.POD_DELETION_REQUIRED):
        n = replace(n, pods=(), unschedulable=True)
    if WALK.index(start) > WALK.index(S.POD_RESTART_REQUIRED):
        n = replace(n, driver_pod=driver(NEW, ready=True))
    seen = [start]
    for _ in range(20):
        step = transition(n, policy(), NOW, may_start=True)
        n = world_after(n, step)
        if step.state is not seen[-1]:
            seen.append(n.state)  # type: ignore[arg-type]
        if n.state is S.UPGRADE_DONE:
            break
    assert seen == WALK[WALK.index(start) :]
    assert not n.unschedulable
    assert set(n.annotations) == {STATE_ENTERED_AT}


def test_an_unknown_state_label_starts_afresh() -> None:
    n = node(None, labels={STATE_LABEL: "bogus"})
    assert transition(n, policy(), NOW).state is S.UPGRADE_REQUIRED


def test_a_failed_node_relabelled_by_hand_loses_its_failure_on_its_next_step() -> None:
    retried = node(S.UPGRADE_REQUIRED, annotations={FAILURE: "old reason"})
    step = transition(retried, policy(), NOW, may_start=True)
    assert step.state is S.CORDON_REQUIRED and step.annotate[FAILURE] is None


def test_a_node_waiting_past_the_threshold_is_reported_once_per_state() -> None:
    waiting = node(S.VALIDATION_REQUIRED, driver_pod=driver(NEW), waited=STUCK_AFTER_SECONDS - 1)
    assert STUCK_REPORTED not in transition(waiting, policy(), NOW).annotate
    late = replace(waiting, annotations={STATE_ENTERED_AT: stamp(NOW - STUCK_AFTER_SECONDS - 1)})
    step = transition(late, policy(), NOW)
    assert step.state is S.VALIDATION_REQUIRED and step.annotate[STUCK_REPORTED] == stamp(NOW)
    reported = replace(late, annotations={**late.annotations, STUCK_REPORTED: stamp(NOW)})
    assert transition(reported, policy(), NOW).annotate == {}
    # Leaving the state clears the mark, so the next state may be reported in turn.
    moving = replace(reported, driver_pod=driver(NEW, ready=True))
    assert transition(moving, policy(), NOW).annotate[STUCK_REPORTED] is None


def test_a_bare_pod_already_terminating_is_waited_for_not_a_failure() -> None:
    leaving = node(
        S.POD_DELETION_REQUIRED, pods=(workload(controller_kind=None, terminating=True),)
    )
    step = transition(leaving, policy(), NOW)
    assert step.state is S.POD_DELETION_REQUIRED and step.evict == ()
