"""The per-node driver upgrade state machine, as data and pure functions.

A node's state lives in its label STATE_LABEL, so any operator replica (or the same one
after a restart) resumes from the cluster alone. `transition` reads one node as observed
(labels, annotations, unschedulable, its driver pod, the pods on it) and returns the next
state, the actions that lead there and a reason a person can read. It never talks to the
API; the executor applies the actions, the state label last, so an interrupted pass
repeats idempotent actions rather than skipping them.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from openxpu_operator.policy import UpgradePolicySpec
from openxpu_runtime.errors import SELF_TEST_FAILED_EXIT

PREFIX = "openxpu.io/driver-upgrade"
STATE_LABEL = f"{PREFIX}-state"
SKIP_LABEL = f"{PREFIX}.skip"
# Whether the node was unschedulable before we cordoned it: such a node is never uncordoned
# by the upgrade (someone else cordoned it, and they will say when it comes back).
INITIAL_UNSCHEDULABLE = f"{PREFIX}.initial-unschedulable"
# When the node entered its current state: every wait and timeout is measured from it.
STATE_ENTERED_AT = f"{PREFIX}.state-entered-at"
# The last refusal of an action (e.g. a PodDisruptionBudget blocking an eviction).
LAST_ERROR = f"{PREFIX}.last-error"
# Why the node's upgrade failed, kept while it stays upgrade-failed.
FAILURE = f"{PREFIX}.failure"
# The driver revision the node failed to reach: a different one wanted later (a rollback,
# a fixed version) takes the node through its walk again, from the pod deletion.
FAILED_REVISION = f"{PREFIX}.failed-revision"
# Set once a node has waited in one state past STUCK_AFTER_SECONDS (and its Warning Event
# sent), so the warning is given once per state, not once per pass.
STUCK_REPORTED = f"{PREFIX}.stuck-reported-at"
STUCK_AFTER_SECONDS = 600
XPU_RESOURCE = "openxpu.io/xpu"
# A driver container restarting more often than this on a node fails the node's upgrade.
MAX_DRIVER_RESTARTS = 5


class State(StrEnum):
    UPGRADE_REQUIRED = "upgrade-required"
    CORDON_REQUIRED = "cordon-required"
    WAIT_FOR_JOBS_REQUIRED = "wait-for-jobs-required"
    POD_DELETION_REQUIRED = "pod-deletion-required"
    DRAIN_REQUIRED = "drain-required"
    POD_RESTART_REQUIRED = "pod-restart-required"
    VALIDATION_REQUIRED = "validation-required"
    UNCORDON_REQUIRED = "uncordon-required"
    UPGRADE_DONE = "upgrade-done"
    UPGRADE_FAILED = "upgrade-failed"


# The states between taking a node and giving it back: a node in one of them counts
# against maxParallelUpgrades.
IN_PROGRESS = frozenset(
    {
        State.CORDON_REQUIRED,
        State.WAIT_FOR_JOBS_REQUIRED,
        State.POD_DELETION_REQUIRED,
        State.DRAIN_REQUIRED,
        State.POD_RESTART_REQUIRED,
        State.VALIDATION_REQUIRED,
        State.UNCORDON_REQUIRED,
    }
)


@dataclass(frozen=True)
class PodView:
    """What the upgrade needs to know of one pod on the node."""

    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    uses_xpu: bool = False
    controller_kind: str | None = None  # kind of the owner with controller=true, if any
    empty_dir: bool = False
    finished: bool = False  # phase Succeeded or Failed
    terminating: bool = False  # deletionTimestamp set

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class DriverPodView:
    namespace: str
    name: str
    revision: str  # its controller-revision-hash label
    ready: bool = False
    restarts: int = 0
    terminating: bool = False
    # What the pod runs (containers, driver version), without labels and annotations that
    # change no behaviour: equal to the DaemonSet's, the pod is current whatever its revision.
    runs: str | None = None
    # The driver container's latest exit (None: it never ended) and its last words: the
    # last line of its termination message, the log tail (FallbackToLogsOnError).
    last_exit: int | None = None
    last_words: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class NodeView:
    """One XPU node as observed in one pass."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    ready: bool = True
    driver_pod: DriverPodView | None = None
    desired_revision: str | None = None  # the driver DaemonSet's current revision hash
    desired_runs: str | None = None  # what the DaemonSet's template runs (DriverPodView.runs)
    pods: tuple[PodView, ...] = ()

    @property
    def state(self) -> State | None:
        try:
            return State(self.labels.get(STATE_LABEL, ""))
        except ValueError:
            return None  # no label, or one edited by hand: the node starts afresh

    @property
    def skipped(self) -> bool:
        return self.labels.get(SKIP_LABEL) == "true"

    @property
    def driver_current(self) -> bool:
        """The node runs the DaemonSet's current driver revision (or has nothing to run)."""
        pod = self.driver_pod
        if self.desired_revision is None:
            return True
        if pod is None or pod.terminating:
            return False
        # A new revision that changes only labels or annotations restarts nothing.
        same_run = pod.runs is not None and pod.runs == self.desired_runs
        return pod.revision == self.desired_revision or same_run


@dataclass(frozen=True)
class Step:
    """What to do with one node now. `state` equal to the node's state means it waits."""

    state: State | None
    reason: str
    cordon: bool | None = None  # True: cordon, False: uncordon, None: leave as is
    evict: tuple[PodView, ...] = ()
    delete: tuple[DriverPodView, ...] = ()
    annotate: Mapping[str, str | None] = field(default_factory=dict)


def stamp(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_stamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None  # a hand-edited annotation restarts the clock rather than failing


def _waited(node: NodeView, now: float) -> float:
    entered = parse_stamp(node.annotations.get(STATE_ENTERED_AT))
    return 0.0 if entered is None else max(0.0, now - entered)


def _of(waited: float, timeout: int) -> str:
    return f"{waited:.0f} s of {timeout}" if timeout else f"{waited:.0f} s, no timeout"


def _selects(selector: str, labels: Mapping[str, str]) -> bool:
    """Equality-based label selectors (`a=b,c!=d,e`), the form the policy fields document."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _failed(reason: str) -> Step:
    return Step(State.UPGRADE_FAILED, reason, annotate={FAILURE: reason})


def _remove_pods(
    node: NodeView,
    pods: list[PodView],
    *,
    what: str,
    force: bool,
    delete_empty_dir: bool,
    timeout: int,
    now: float,
    then: State,
) -> Step:
    """Evict `pods` (Eviction API: PodDisruptionBudgets hold) until none is left; past
    `timeout` the node fails with what still blocks, it is never forced."""
    waited = _waited(node, now)
    if not pods:
        return Step(then, f"{what}: no pods left on the node")
    pending = tuple(p for p in pods if not p.terminating)
    for pod in pending:  # a pod already leaving loses nothing more by our hand
        if pod.controller_kind is None and not force:
            return _failed(
                f"{what}: pod {pod.ref} is not managed by a controller and would be lost; "
                "set force to delete it"
            )
        if pod.empty_dir and not delete_empty_dir:
            return _failed(
                f"{what}: pod {pod.ref} has an emptyDir volume whose data would be lost; "
                "set deleteEmptyDir to delete it"
            )
    blocker = node.annotations.get(LAST_ERROR)
    names = ", ".join(p.ref for p in pods)
    if timeout and waited > timeout:
        why = f" ({blocker})" if blocker else ""
        return _failed(f"{what}: pods {names} still on the node after {timeout} s{why}")
    why = f"; {blocker}" if blocker else ""
    return Step(
        node.state,
        f"{what}: waiting for pods {names} to leave ({_of(waited, timeout)}){why}",
        evict=pending,
    )


def _cordon(node: NodeView) -> Step:
    annotate: dict[str, str | None] = {}
    if INITIAL_UNSCHEDULABLE not in node.annotations:
        annotate[INITIAL_UNSCHEDULABLE] = str(node.unschedulable).lower()
    return Step(
        State.WAIT_FOR_JOBS_REQUIRED,
        "was unschedulable before the upgrade"
        if node.annotations.get(INITIAL_UNSCHEDULABLE, str(node.unschedulable).lower()) == "true"
        else "cordoned",
        cordon=None if node.unschedulable else True,
        annotate=annotate,
    )


def _wait_for_jobs(node: NodeView, policy: UpgradePolicySpec, now: float) -> Step:
    spec = policy.wait_for_completion
    if not spec.pod_selector:
        return Step(State.POD_DELETION_REQUIRED, "no jobs to wait for")
    running = [p for p in node.pods if not p.finished and _selects(spec.pod_selector, p.labels)]
    if not running:
        return Step(State.POD_DELETION_REQUIRED, "the jobs on the node have completed")
    waited = _waited(node, now)
    names = ", ".join(p.ref for p in running)
    if spec.timeout_seconds and waited > spec.timeout_seconds:
        # Safer than NVIDIA (which goes on after the timeout): a job is never cut short.
        return _failed(f"jobs {names} still running after {spec.timeout_seconds} s")
    return Step(
        node.state,
        f"waiting for job {names} to complete ({_of(waited, spec.timeout_seconds)})",
    )


def _driver_failure(pod: DriverPodView | None) -> str | None:
    """Why the current driver pod has failed for good, if it has: its self-test failed
    (that build fails it on every start, so there is no point waiting out the crash loop's
    back-off), or it restarted too often. The reason ends with what the driver said."""
    if pod is None:
        return None
    said = f": {pod.last_words}" if pod.last_words else ""
    if pod.last_exit == SELF_TEST_FAILED_EXIT and not pod.ready:
        return f"driver pod {pod.ref} failed its start-up self-test (exit {pod.last_exit}){said}"
    if pod.restarts > MAX_DRIVER_RESTARTS:
        ended = f"; last exit {pod.last_exit}" if pod.last_exit is not None else ""
        return f"driver pod {pod.ref} restarted {pod.restarts} times{ended}{said}"
    return None


def _restart_driver(node: NodeView) -> Step:
    pod = node.driver_pod
    if node.driver_current:
        if failure := _driver_failure(pod):
            return _failed(failure)
        return Step(State.VALIDATION_REQUIRED, "the driver pod runs the new revision")
    # An old driver pod that crash-loops (the version being rolled back) is replaced.
    if pod is None or pod.terminating:
        return Step(node.state, "waiting for the DaemonSet to start the new driver pod")
    return Step(
        node.state,
        f"deleting driver pod {pod.ref} (revision {pod.revision}, wanted {node.desired_revision})",
        delete=(pod,),
    )


def _validate(node: NodeView) -> Step:
    pod = node.driver_pod
    if not node.driver_current:
        return Step(State.POD_RESTART_REQUIRED, "the driver pod is not the new revision")
    if failure := _driver_failure(pod):
        return _failed(failure)
    if pod is None or pod.ready:
        return Step(State.UNCORDON_REQUIRED, "the new driver is ready")
    return Step(node.state, f"validation pending: driver pod {pod.ref} not ready")


def _uncordon(node: NodeView) -> Step:
    if node.annotations.get(INITIAL_UNSCHEDULABLE) == "true":
        why = "upgraded; left unschedulable as it was before the upgrade"
        cordon = None
    else:
        why, cordon = "upgraded and uncordoned", False
    return Step(State.UPGRADE_DONE, why, cordon=cordon, annotate={INITIAL_UNSCHEDULABLE: None})


def _next(node: NodeView, policy: UpgradePolicySpec, now: float, may_start: bool) -> Step:
    state = node.state
    if state in (None, State.UPGRADE_DONE):
        if node.driver_current:
            return Step(state, "the driver is up to date")
        return Step(State.UPGRADE_REQUIRED, "the driver pod is out of date")
    if state is State.UPGRADE_REQUIRED:
        if node.driver_current:
            return Step(State.UPGRADE_DONE, "the driver is up to date")
        if may_start:
            return Step(State.CORDON_REQUIRED, "upgrade started")
        return Step(state, "waiting for a free upgrade slot (maxParallelUpgrades/maxUnavailable)")
    if state is State.CORDON_REQUIRED:
        return _cordon(node)
    if state is State.WAIT_FOR_JOBS_REQUIRED:
        return _wait_for_jobs(node, policy, now)
    if state is State.POD_DELETION_REQUIRED:
        spec = policy.pod_deletion
        return _remove_pods(
            node,
            [p for p in node.pods if p.uses_xpu and not p.finished],
            what="pod deletion",
            force=spec.force,
            delete_empty_dir=spec.delete_empty_dir,
            timeout=spec.timeout_seconds,
            now=now,
            then=State.DRAIN_REQUIRED,
        )
    if state is State.DRAIN_REQUIRED:
        drain = policy.drain
        if not drain.enable:
            return Step(State.POD_RESTART_REQUIRED, "drain disabled")
        # DaemonSet pods come back at once on the same node: draining them is pointless.
        return _remove_pods(
            node,
            [
                p
                for p in node.pods
                if p.controller_kind != "DaemonSet"
                and not p.finished
                and _selects(drain.pod_selector, p.labels)
            ],
            what="drain",
            force=drain.force,
            delete_empty_dir=drain.delete_empty_dir,
            timeout=drain.timeout_seconds,
            now=now,
            then=State.POD_RESTART_REQUIRED,
        )
    if state is State.POD_RESTART_REQUIRED:
        return _restart_driver(node)
    if state is State.VALIDATION_REQUIRED:
        return _validate(node)
    if state is State.UNCORDON_REQUIRED:
        return _uncordon(node)
    # upgrade-failed: a driver that comes back current and ready (a rollback, or a fix)
    # recovers the node; otherwise it stays failed with its reason.
    pod = node.driver_pod
    if node.driver_current and (pod is None or pod.ready):
        return Step(State.UNCORDON_REQUIRED, "the driver is current and ready again")
    failed_at = node.annotations.get(FAILED_REVISION)
    if failed_at is not None and not node.driver_current and node.desired_revision != failed_at:
        # Still cordoned: the XPU pods are made sure of again before the driver is replaced.
        return Step(
            State.POD_DELETION_REQUIRED,
            f"the driver changed since the failure (revision {failed_at or 'unknown'} -> "
            f"{node.desired_revision}): upgrading again",
        )
    return Step(state, node.annotations.get(FAILURE, "upgrade failed"))


def transition(
    node: NodeView, policy: UpgradePolicySpec, now: float, *, may_start: bool = False
) -> Step:
    """The next step of one node. `may_start` is the planner's word that an
    upgrade-required node may take a slot now."""
    if node.skipped and node.state not in IN_PROGRESS:
        # A node mid-walk finishes it rather than being left cordoned.
        return Step(node.state, f"skipped ({SKIP_LABEL}=true)")
    step = _next(node, policy, now, may_start)
    if step.state == node.state:
        if (
            (node.state in IN_PROGRESS or node.state is State.UPGRADE_REQUIRED)
            and STUCK_REPORTED not in node.annotations
            and _waited(node, now) > STUCK_AFTER_SECONDS
        ):
            # No node sits in a state silently: the executor turns this into a Warning.
            return replace(step, annotate={**step.annotate, STUCK_REPORTED: stamp(now)})
        return step
    annotate: dict[str, str | None] = {STATE_ENTERED_AT: stamp(now), LAST_ERROR: None}
    if STUCK_REPORTED in node.annotations:
        annotate[STUCK_REPORTED] = None
    for key in (FAILURE, FAILED_REVISION):
        if key in node.annotations:
            annotate[key] = None  # also when a person relabels a failed node to retry
    if step.state is State.UPGRADE_FAILED:
        annotate[FAILED_REVISION] = node.desired_revision or ""
    annotate.update(step.annotate)
    return Step(step.state, step.reason, step.cordon, step.evict, step.delete, annotate)
