"""Which nodes are XPU nodes, and the labels the operator puts on them (pure functions).

A node is an XPU node when it matches the policy's nodeSelector (an empty one selects every
node), when an emulation pool selects it, or when feature discovery found XPUs on it. It
gets `openxpu.io/xpu.present=true`, its emulation profile, and `openxpu.io/xpu.deploy.<operand>
=true` for each enabled operand. A deploy label an admin set to `false` is theirs: never
overwritten, never removed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from openxpu_operator.policy import XPUClusterPolicySpec
from openxpu_operator.render import DEPLOY_LABEL_PREFIX, PROFILE_LABEL, deploy_label

PRESENT_LABEL = "openxpu.io/xpu.present"
# Written by feature discovery when it finds XPUs: a node with devices is an XPU node.
COUNT_LABEL = "openxpu.io/xpu.count"
# Every label under these prefixes is the stack's (operator or feature discovery).
XPU_LABEL_PREFIX = "openxpu.io/xpu."
STACK_LABEL_PREFIXES = (XPU_LABEL_PREFIX, "openxpu.io/driver.")
ADMIN_OFF = "false"
ON = "true"

LabelPatch = dict[str, str | None]


def _matches(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _discovered(labels: Mapping[str, str]) -> bool:
    count = labels.get(COUNT_LABEL, "")
    return count.isdigit() and int(count) > 0


def is_xpu_node(spec: XPUClusterPolicySpec, labels: Mapping[str, str]) -> bool:
    return (
        _matches(spec.node_selector, labels)
        or any(_matches(p.node_selector, labels) for p in spec.emulation.node_pools)
        or _discovered(labels)
    )


def desired_labels(
    spec: XPUClusterPolicySpec, enabled: Iterable[str], labels: Mapping[str, str]
) -> LabelPatch:
    """The label patch that brings one node to what the policy wants (empty: nothing to do).

    `enabled` are the enabled operands' names; labels of disabled ones are removed so their
    pods leave the node; an admin's `false` stays as it is.
    """
    want: dict[str, str] = {}
    if is_xpu_node(spec, labels):
        want[PRESENT_LABEL] = ON
        want[PROFILE_LABEL] = spec.node_profile(dict(labels))
        want.update({deploy_label(name): ON for name in enabled})
    patch: LabelPatch = {}
    for key, value in want.items():
        if key.startswith(DEPLOY_LABEL_PREFIX) and labels.get(key) == ADMIN_OFF:
            continue
        if labels.get(key) != value:
            patch[key] = value
    for key in ours(labels):
        if key not in want and not _from_discovery(key):
            patch[key] = None
    return patch


def _from_discovery(key: str) -> bool:
    """Feature discovery's own labels (count, product, ...) stay while the stack runs."""
    return key.startswith(STACK_LABEL_PREFIXES) and not (
        key == PRESENT_LABEL or key.startswith(DEPLOY_LABEL_PREFIX)
    )


def ours(labels: Mapping[str, str]) -> list[str]:
    """The labels the stack added to a node: everything under openxpu.io/xpu. and
    openxpu.io/driver. and the profile, except a deploy label an admin set to false."""
    keys = []
    for key, value in labels.items():
        if key.startswith(DEPLOY_LABEL_PREFIX) and value == ADMIN_OFF:
            continue
        if key.startswith(STACK_LABEL_PREFIXES) or key == PROFILE_LABEL:
            keys.append(key)
    return sorted(keys)


def removal(labels: Mapping[str, str]) -> LabelPatch:
    """The patch that removes every label the stack added (on uninstall)."""
    return dict.fromkeys(ours(labels))


def admin_disabled(labels: Mapping[str, str]) -> set[str]:
    """Operands an admin keeps off this node."""
    return {
        key.removeprefix(DEPLOY_LABEL_PREFIX)
        for key, value in labels.items()
        if key.startswith(DEPLOY_LABEL_PREFIX) and value == ADMIN_OFF
    }


def advertises(node: Mapping[str, object], resource: str) -> bool:
    """Whether a Node's kubelet advertises at least one `resource` (the device plugin has
    registered there): before that, a pod asking for one cannot be scheduled."""
    status = node.get("status")
    allocatable = status.get("allocatable") if isinstance(status, Mapping) else None
    count = allocatable.get(resource, "") if isinstance(allocatable, Mapping) else ""
    return isinstance(count, str) and count.isdigit() and int(count) > 0
