"""Status that explains itself, computed from what the operator observed (pure functions).

`compute_status(observation)` turns the rendered operands, the DaemonSets and Jobs the API
server holds, their pods and the XPU nodes into the policy's status: per-operand rollout
with the first failing node or pod, one condition per operand, the per-node summary and the
roll-up (`Ready` and `Error`). Reasons are CamelCase; docs/operator.md says what each
means and what to do about it (a test keeps every one there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openxpu_operator.policy import (
    Condition,
    ConditionStatus,
    NodesSummary,
    NodeStatus,
    OperandStatus,
    PolicyState,
    XPUClusterPolicyStatus,
)
from openxpu_operator.render import BARRIER_DIR, RenderedOperand

JSON = dict[str, Any]
COMPONENT_LABEL = "app.kubernetes.io/component"
VALIDATION_NODE = "openxpu.io/validation-node"

# Roll-up reasons.
RECONCILED = "Reconciled"
OPERAND_NOT_READY = "OperandNotReady"
NO_XPU_NODES = "NoXPUNodes"
CONFLICTING_POLICY = "ConflictingPolicy"
INVALID_SPEC = "InvalidSpec"
CRD_OUTDATED = "CRDOutdated"
APPLY_FAILED = "ApplyFailed"
NO_ERROR = "NoError"
# Operand and node reasons, most telling first.
READY = "Ready"
APPLY_ERROR = "ApplyError"
IMAGE_PULL = "ImagePullError"
UNSCHEDULABLE = "Unschedulable"
CRASH_LOOP = "CrashLoopBackOff"
VALIDATION_FAILED = "ValidationFailed"
BARRIER_NOT_REACHED = "BarrierNotReached"
POD_NOT_READY = "PodNotReady"
POD_MISSING = "PodMissing"
ROLLING_OUT = "RollingOut"
NOT_OBSERVED = "NotObservedYet"
NO_NODES_SELECTED = "NoNodesSelected"
VALIDATION_RUNNING = "ValidationRunning"
XPUS_NOT_ADVERTISED = "XPUsNotAdvertised"
WORKLOAD_VALIDATION = "workload-validation"

_IMAGE_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_ERROR_REASONS = {INVALID_SPEC, CRD_OUTDATED, APPLY_FAILED}


@dataclass(frozen=True)
class Problem:
    """Why something is not ready: a reason and a message naming the node or pod."""

    reason: str
    message: str
    node: str = ""


@dataclass
class Observation:
    """Everything the status is computed from, as read from the API server."""

    generation: int
    operands: Sequence[RenderedOperand]
    objects: Mapping[tuple[str, str], JSON]  # (kind, name) -> the object the server holds
    pods: Sequence[JSON]
    xpu_nodes: Mapping[str, str]  # node -> emulation profile
    previous: Sequence[Mapping[str, Any]] = ()  # the conditions now in status
    now: str = ""
    log_tails: Mapping[str, str] = field(default_factory=dict)  # pod name -> last lines
    apply_errors: Mapping[str, str] = field(default_factory=dict)  # operand -> message
    crd_missing: Sequence[str] = ()  # fields the installed CRD would prune
    admin_disabled: Mapping[str, set[str]] = field(default_factory=dict)  # node -> operands
    awaiting_xpus: Sequence[str] = ()  # XPU nodes whose kubelet advertises no XPU yet
    xpu_resource: str = "openxpu.io/xpu"


# -- pods ----------------------------------------------------------------------------------


def _pod_name(pod: JSON) -> str:
    return str(pod["metadata"]["name"])


def _pod_node(pod: JSON) -> str:
    return str(pod.get("spec", {}).get("nodeName") or "")


def _condition(obj: JSON, kind: str) -> JSON:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return {}


def pod_problem(pod: JSON, log_tails: Mapping[str, str]) -> Problem | None:
    """Why one pod is not (yet) doing its job, or None when it is."""
    name, node = _pod_name(pod), _pod_node(pod)
    where = f"pod {name}" + (f" on node {node}" if node else "")
    status = pod.get("status") or {}
    phase = status.get("phase", "Pending")
    if phase == "Succeeded":
        return None
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False":
        message = scheduled.get("message") or scheduled.get("reason") or "not scheduled"
        return Problem(UNSCHEDULABLE, f"{where} is Pending: {message}", node)
    containers = list(status.get("initContainerStatuses") or []) + list(
        status.get("containerStatuses") or []
    )
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _IMAGE_REASONS:
            detail = waiting.get("message") or waiting["reason"]
            return Problem(IMAGE_PULL, f"{where}: container {c['name']}: {detail}", node)
    for c in containers:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CrashLoopBackOff":
            last = ((c.get("lastState") or {}).get("terminated") or {}).get("message", "")
            tail = log_tails.get(name, "") or last
            detail = f": {tail.strip()}" if tail.strip() else ""
            return Problem(
                CRASH_LOOP, f"{where}: container {c['name']} keeps failing{detail}", node
            )
    if phase == "Failed":
        tail = log_tails.get(name, "").strip()
        detail = f"; last log lines: {tail}" if tail else ""
        return Problem(VALIDATION_FAILED, f"{where} failed{detail}", node)
    for c in status.get("initContainerStatuses") or []:
        if c.get("name", "").startswith("wait-for-") and not (c.get("state") or {}).get(
            "terminated"
        ):
            component = c["name"].removeprefix("wait-for-")
            barrier = f"{BARRIER_DIR}/{component}-ready"
            return Problem(BARRIER_NOT_REACHED, f"{where} waits for the barrier {barrier}", node)
    if phase == "Running" and _condition(pod, "Ready").get("status") == "True":
        return None
    not_ready = [c["name"] for c in status.get("containerStatuses") or [] if not c.get("ready")]
    detail = f" (containers not ready: {', '.join(not_ready)})" if not_ready else ""
    return Problem(POD_NOT_READY, f"{where} is {phase}{detail}", node)


# -- operands ------------------------------------------------------------------------------


def _daemonset_counts(ds: JSON) -> tuple[int, int, int, bool]:
    """desired, ready, updated, and whether the controller has seen the current spec."""
    st = ds.get("status") or {}
    seen = st.get("observedGeneration", 0) >= ds.get("metadata", {}).get("generation", 1)
    return (
        int(st.get("desiredNumberScheduled", 0)),
        int(st.get("numberReady", 0)),
        int(st.get("updatedNumberScheduled", 0)),
        seen,
    )


def _job_done(job: JSON) -> tuple[bool, bool]:
    """succeeded, failed."""
    complete = _condition(job, "Complete").get("status") == "True"
    failed = _condition(job, "Failed").get("status") == "True"
    return complete, failed


def _first(problems: Sequence[Problem]) -> Problem | None:
    order = [
        APPLY_ERROR,
        IMAGE_PULL,
        UNSCHEDULABLE,
        CRASH_LOOP,
        VALIDATION_FAILED,
        BARRIER_NOT_REACHED,
        POD_NOT_READY,
    ]
    ranked = sorted(
        problems, key=lambda p: order.index(p.reason) if p.reason in order else len(order)
    )
    return ranked[0] if ranked else None


def operand_status(
    operand: RenderedOperand, obs: Observation, pods: Sequence[JSON]
) -> tuple[OperandStatus, dict[str, Problem]]:
    """One operand's rollout and, per node, what keeps it from being ready there."""
    if not operand.enabled:
        return OperandStatus(name=operand.name, enabled=False), {}
    by_node: dict[str, Problem] = {}
    problems: list[Problem] = []
    for pod in pods:
        p = pod_problem(pod, obs.log_tails)
        if p is not None:
            problems.append(p)
            if p.node:
                by_node.setdefault(p.node, p)
    desired = ready = updated = 0
    pending: list[Problem] = []
    for obj in operand.objects:
        name = obj["metadata"]["name"]
        live = obs.objects.get((obj["kind"], name))
        if obj["kind"] == "DaemonSet":
            if live is None:
                pending.append(Problem(NOT_OBSERVED, f"DaemonSet {name} is not created yet"))
                continue
            d, r, u, seen = _daemonset_counts(live)
            desired, ready, updated = desired + d, ready + r, updated + u
            if not seen:
                message = f"DaemonSet {name}: the DaemonSet controller has not rolled it out yet"
                pending.append(Problem(ROLLING_OUT, message))
            elif r < d:
                pending.append(Problem(ROLLING_OUT, f"DaemonSet {name}: {r}/{d} pods ready"))
            elif d == 0:
                pending.append(Problem(NO_NODES_SELECTED, f"DaemonSet {name} selects no node yet"))
        elif obj["kind"] == "Job":
            node = obj["metadata"].get("annotations", {}).get(VALIDATION_NODE, "")
            desired += 1
            if live is None:
                pending.append(Problem(NOT_OBSERVED, f"Job {name} is not created yet", node))
                continue
            done, failed = _job_done(live)
            if done:
                ready, updated = ready + 1, updated + 1
                by_node.pop(node, None)
                continue
            if failed:
                problem = next((p for p in problems if p.node == node), None)
                message = problem.message if problem else f"Job {name} failed"
                failure = Problem(VALIDATION_FAILED, f"validation on node {node}: {message}", node)
                problems.append(failure)
                by_node[node] = failure
            else:
                pending.append(Problem(VALIDATION_RUNNING, f"Job {name} on node {node}", node))
                by_node.setdefault(node, pending[-1])
    if operand.name == WORKLOAD_VALIDATION:
        # An earlier step than a validation that runs: named first.
        waiting = [
            Problem(
                XPUS_NOT_ADVERTISED,
                f"node {node} advertises no {obs.xpu_resource} yet (the device plugin has "
                "not registered there); its validation Job is created when it does",
                node,
            )
            for node in obs.awaiting_xpus
        ]
        desired += len(waiting)
        pending[:0] = waiting
        by_node.update((p.node, p) for p in waiting)
    if operand.name in obs.apply_errors:
        problems.insert(0, Problem(APPLY_ERROR, obs.apply_errors[operand.name]))
    first = _first(problems) if (pending or problems) else None
    if first is None and pending:
        first = pending[0]
    status = OperandStatus(
        name=operand.name,
        desired=desired,
        ready=ready,
        updated=updated,
        reason=first.reason if first else "",
        message=first.message if first else "",
    )
    return status, by_node


def _pods_of(operand: str, pods: Sequence[JSON]) -> list[JSON]:
    return [p for p in pods if p["metadata"].get("labels", {}).get(COMPONENT_LABEL) == operand]


# -- conditions ----------------------------------------------------------------------------


def _transition_time(
    kind: str, status: ConditionStatus, previous: Sequence[Mapping[str, Any]], now: str
) -> str:
    """lastTransitionTime moves only when the status does."""
    before = next((c for c in previous if c.get("type") == kind), None)
    if before is not None and before.get("status") == status.value:
        return str(before.get("lastTransitionTime") or now)
    return now


def _cond(
    kind: str, ok: bool, reason: str, message: str, obs: Observation, *, positive: bool = True
) -> Condition:
    status = ConditionStatus.TRUE if ok == positive else ConditionStatus.FALSE
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        observed_generation=obs.generation,
        last_transition_time=_transition_time(kind, status, obs.previous, obs.now),
    )


def _nodes_summary(
    obs: Observation, per_operand: Mapping[str, dict[str, Problem]], enabled: Sequence[str]
) -> NodesSummary:
    """Per XPU node: ready when every enabled operand that should run there runs."""
    present: dict[str, set[str]] = {}
    for pod in obs.pods:
        component = pod["metadata"].get("labels", {}).get(COMPONENT_LABEL, "")
        if pod_problem(pod, obs.log_tails) is None and _pod_node(pod):
            present.setdefault(_pod_node(pod), set()).add(component)
    not_ready: list[NodeStatus] = []
    for node in sorted(obs.xpu_nodes):
        off = obs.admin_disabled.get(node, set())
        problem: Problem | None = None
        for name in enabled:
            if name in off:
                continue
            p = per_operand.get(name, {}).get(node)
            if p is None and name not in present.get(node, set()):
                p = Problem(POD_MISSING, f"no ready {name} pod on node {node} yet", node)
            if p is not None:
                problem = p
                break
        if problem is not None:
            not_ready.append(
                NodeStatus(
                    name=node,
                    profile=obs.xpu_nodes[node],
                    reason=problem.reason,
                    message=problem.message,
                )
            )
    total = len(obs.xpu_nodes)
    return NodesSummary(total=total, ready=total - len(not_ready), not_ready=not_ready)


def compute_status(obs: Observation) -> XPUClusterPolicyStatus:
    """The whole status of the active policy."""
    operands: list[OperandStatus] = []
    conditions: list[Condition] = []
    per_node: dict[str, dict[str, Problem]] = {}
    for operand in obs.operands:
        st, by_node = operand_status(operand, obs, _pods_of(operand.name, obs.pods))
        operands.append(st)
        per_node[operand.name] = by_node
        if operand.enabled:
            ok = not st.reason
            message = st.message or f"{st.ready}/{st.desired} ready"
            conditions.append(_cond(operand.condition, ok, st.reason or READY, message, obs))
    enabled = [o for o in operands if o.enabled]
    ready_count = sum(1 for o in enabled if not o.reason)
    nodes = _nodes_summary(obs, per_node, [o.name for o in enabled])
    reason, message = RECONCILED, "every enabled operand is ready on every XPU node"
    if obs.crd_missing:
        reason = CRD_OUTDATED
        message = (
            "the installed XPUClusterPolicy CRD lacks fields this operator needs (they would "
            f"be pruned): {', '.join(obs.crd_missing)}; apply operator/deploy/crds/"
        )
    elif obs.apply_errors:
        reason = APPLY_FAILED
        message = "; ".join(f"{k}: {v}" for k, v in obs.apply_errors.items())
    elif not obs.xpu_nodes:
        reason = NO_XPU_NODES
        message = "no node is an XPU node: none matches spec.nodeSelector or a node pool"
    else:
        failing = next((o for o in enabled if o.reason), None)
        if failing is not None:
            reason = OPERAND_NOT_READY
            message = f"{failing.name}: {failing.reason}: {failing.message}"
    ready = reason == RECONCILED
    conditions.insert(0, _cond("Ready", ready, reason, message, obs))
    error = reason in _ERROR_REASONS
    conditions.insert(
        1,
        _cond(
            "Error",
            not error,
            reason if error else NO_ERROR,
            message if error else "",
            obs,
            positive=False,
        ),
    )
    return XPUClusterPolicyStatus(
        state=PolicyState.READY if ready else PolicyState.NOT_READY,
        observed_generation=obs.generation,
        conditions=conditions,
        operands=operands,
        operands_ready=f"{ready_count}/{len(enabled)}",
        nodes=nodes,
        nodes_ready=f"{nodes.ready}/{nodes.total}",
    )


def special_status(
    generation: int,
    reason: str,
    message: str,
    previous: Sequence[Mapping[str, Any]],
    now: str,
    *,
    active: str | None = None,
) -> XPUClusterPolicyStatus:
    """The status of a policy the operator does not reconcile: ignored (another policy is
    active) or invalid (its spec cannot be read)."""
    obs = Observation(generation, (), {}, (), {}, previous=previous, now=now)
    conditions = [
        _cond("Ready", False, reason, message, obs),
        _cond(
            "Error",
            reason != INVALID_SPEC,
            reason if reason == INVALID_SPEC else NO_ERROR,
            message if reason == INVALID_SPEC else "",
            obs,
            positive=False,
        ),
    ]
    if reason == CONFLICTING_POLICY:
        conditions.append(_cond(CONFLICTING_POLICY, True, CONFLICTING_POLICY, message, obs))
    state = PolicyState.IGNORED if reason == CONFLICTING_POLICY else PolicyState.NOT_READY
    return XPUClusterPolicyStatus(
        state=state,
        observed_generation=generation,
        conditions=conditions,
        active_policy=active,
        operands_ready="",
        nodes_ready="",
    )


def status_body(status: XPUClusterPolicyStatus) -> JSON:
    """The status as the API stores it (camelCase), every field present so a merge patch
    replaces what an earlier reconcile wrote."""
    data: JSON = status.model_dump(mode="json", by_alias=True)
    return data
