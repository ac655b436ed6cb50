"""Operands as data: the numbered template folders in `manifests/`, rendered from a policy.

`render_operands(policy, context)` returns every operand in apply order, each with its
objects in order; a disabled operand comes back with no objects (its objects are to be
pruned). Templates are Jinja2 with StrictUndefined, so a missing variable is an error, never
an empty string. Every object gets the owner reference to the policy and the labels that
mark it as ours here, not in each template.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePosixPath
from typing import Any

import jinja2
import yaml

from openxpu_operator.policy import (
    API_VERSION,
    BUILTIN_PROFILES,
    KIND,
    DeviceListStrategy,
    UpdateStrategyType,
    XPUClusterPolicy,
    XPUClusterPolicySpec,
)

MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "openxpu-operator"
PART_OF = "app.kubernetes.io/part-of"
# libyaml's safe loader when PyYAML has it: the pure-Python one spent ~10 ms per rendered
# object, seconds per pass at 1000 nodes (one validation Job each).
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Which policy an object belongs to: a label, so the controller can list (and prune) them.
POLICY_LABEL = "openxpu.io/policy"
OPERAND_LABEL = "openxpu.io/operand"
BARRIER_DIR = "/run/openxpu/validations"
DEPLOY_LABEL_PREFIX = "openxpu.io/xpu.deploy."
PROFILE_LABEL = "openxpu.io/emulation.profile"


def deploy_label(operand: str) -> str:
    """The node label that lets (`true`) or keeps (`false`) an operand off a node."""
    return f"{DEPLOY_LABEL_PREFIX}{operand}"


@dataclass(frozen=True)
class Operand:
    """One operand: its name (status, conditions, node deploy label) and template folder."""

    name: str
    folder: str
    enabled: Callable[[XPUClusterPolicySpec], bool]

    @property
    def condition(self) -> str:
        """Its status condition type, e.g. DevicePluginReady."""
        special = {"cdi": "CDI"}
        words = [special.get(w, w.capitalize()) for w in self.name.split("-")]
        return "".join(words) + "Ready"


# Apply order, like the GPU Operator's states; the folder numbers say the same. The device
# plugin and feature discovery (30, 31) are one step of the order but enabled separately.
OPERANDS: tuple[Operand, ...] = (
    Operand("driver", "00-driver", lambda s: s.driver.enabled),
    Operand("cdi", "10-cdi", lambda s: s.cdi.enabled),
    Operand("driver-validation", "20-driver-validation", lambda s: s.validator.enabled),
    Operand("device-plugin", "30-device-plugin", lambda s: s.device_plugin.enabled),
    Operand("feature-discovery", "31-feature-discovery", lambda s: s.feature_discovery.enabled),
    Operand("exporter", "40-exporter", lambda s: s.exporter.enabled),
    Operand(
        "workload-validation",
        "50-workload-validation",
        lambda s: s.validator.enabled and s.validator.workload.enabled,
    ),
)


@dataclass(frozen=True)
class RenderContext:
    """What the templates need beyond the policy: where operands live and, for the per-node
    workload validation, which XPU nodes there are."""

    namespace: str = "openxpu"
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedOperand:
    name: str
    enabled: bool
    objects: list[dict[str, Any]] = field(default_factory=list)

    @property
    def condition(self) -> str:
        return next(o.condition for o in OPERANDS if o.name == self.name)


class RenderError(RuntimeError):
    """A template that cannot be rendered (a bug in the templates, not in the policy)."""


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load_template),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.globals.update(deploy_label=deploy_label, merged=_merged)
    return env


def _manifests() -> Any:
    return resources.files("openxpu_operator") / "manifests"


def _load_template(name: str) -> str:
    text: str = (_manifests() / name).read_text()
    return text


def _templates(folder: str) -> list[str]:
    entries = sorted(e.name for e in (_manifests() / folder).iterdir() if e.name.endswith(".j2"))
    return [f"{folder}/{e}" for e in entries]


def _merged(*maps: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in maps:
        out.update(m)
    return out


def _digest(data: object) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plugin_config(spec: XPUClusterPolicySpec) -> dict[str, Any]:
    config = spec.device_plugin.config
    data = config.model_dump(mode="json", by_alias=True)
    if spec.cdi.default:
        # CDI as the only way devices reach containers: CDI names in Allocate, nothing else.
        data["flags"]["deviceListStrategy"] = [DeviceListStrategy.CDI.value]
    if not spec.driver.nvidia_compat:
        data["flags"]["nvidiaCompat"] = False  # at once: a driver keeps its files until reinstalled
    text = yaml.safe_dump(data, sort_keys=False)
    return {"yaml": text, "hash": _digest(data), "resource": config.advertised_resource}


def _driver_profiles(spec: XPUClusterPolicySpec) -> tuple[list[dict[str, Any]], list[Any]]:
    """The driver DaemonSets (one per profile in use) and the custom profiles' JSON files."""
    daemonsets, custom = [], []
    for name in spec.profiles_in_use():
        if name in BUILTIN_PROFILES:
            daemonsets.append(
                {
                    "name": name,
                    "daemonset": f"openxpu-driver-{name}",
                    "argument": name,
                    "custom": False,
                    "hash": _digest(name),
                }
            )
            continue
        profile = spec.emulation.profiles[name].resolve(name).to_dict()
        text = json.dumps(profile, sort_keys=True, indent=1)
        custom.append({"name": name, "json": text})
        daemonsets.append(
            {
                "name": name,
                "daemonset": f"openxpu-driver-{name}",
                "argument": f"/etc/openxpu/profiles/{name}.json",
                "custom": True,
                "hash": _digest(profile),
            }
        )
    return daemonsets, custom


def _workload_nodes(nodes: tuple[str, ...]) -> list[dict[str, str]]:
    # Node names may be 253 characters; a Job name (and its pods' job-name label) only 63.
    return [
        {"name": n, "job": f"openxpu-workload-validation-{_digest(n)[:10]}"} for n in sorted(nodes)
    ]


def _wait_for(spec: XPUClusterPolicySpec) -> Callable[[str], dict[str, Any]]:
    def container(component: str) -> dict[str, Any]:
        barrier = f"{BARRIER_DIR}/{component}-ready"
        return {
            "name": f"wait-for-{component}",
            "image": spec.validator.image,
            "imagePullPolicy": str(spec.validator.image_pull_policy),
            "command": [
                "sh",
                "-c",
                # A test of a file each second costs nothing; each second slept here
                # is a second of the operand chain (driver -> ... -> workload validation).
                f"until [ -f {barrier} ]; do echo waiting for the barrier {barrier}; sleep 1; done",
            ],
            "securityContext": {
                "runAsUser": 65534,
                "runAsNonRoot": True,
                "readOnlyRootFilesystem": True,
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "validations", "mountPath": BARRIER_DIR, "readOnly": True}],
        }

    return container


def _variables(policy: XPUClusterPolicy, context: RenderContext) -> dict[str, Any]:
    spec = policy.spec
    ds = spec.daemonsets
    pod_labels = _merged(spec.operator.labels, ds.labels, {PART_OF: "openxpu", MANAGED_BY: MANAGER})
    pod_annotations = _merged(spec.operator.annotations, ds.annotations)
    update_strategy: dict[str, Any] = {"type": str(ds.update_strategy)}
    if ds.update_strategy is UpdateStrategyType.ROLLING_UPDATE:
        update_strategy["rollingUpdate"] = {"maxUnavailable": ds.max_unavailable}
    driver_profiles, custom_profiles = _driver_profiles(spec)
    return {
        "spec": spec,
        "namespace": context.namespace,
        "barrier_dir": BARRIER_DIR,
        "pod_resources_dir": str(
            PurePosixPath(spec.device_plugin.config.flags.pod_resources_socket).parent
        ),
        "tolerations": [
            t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in ds.tolerations
        ],
        "update_strategy": update_strategy,
        "pod_labels": lambda own: _merged(pod_labels, own),
        "pod_annotations": lambda own: _merged(pod_annotations, own),
        "wait_for": _wait_for(spec),
        "plugin_config": _plugin_config(spec),
        "driver_profiles": driver_profiles,
        "custom_profiles": custom_profiles,
        "workload_nodes": _workload_nodes(context.nodes),
    }


def owner_reference(policy: XPUClusterPolicy) -> dict[str, Any]:
    meta = policy.metadata
    if not meta.get("name") or not meta.get("uid"):
        raise RenderError("the policy needs metadata.name and metadata.uid to own its operands")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _stamp(obj: dict[str, Any], policy: XPUClusterPolicy, operand: str) -> dict[str, Any]:
    spec = policy.spec
    meta = obj.setdefault("metadata", {})
    meta["labels"] = _merged(
        spec.operator.labels,
        meta.get("labels") or {},
        {
            MANAGED_BY: MANAGER,
            PART_OF: "openxpu",
            POLICY_LABEL: policy.metadata["name"],
            OPERAND_LABEL: operand,
        },
    )
    annotations = _merged(spec.operator.annotations, meta.get("annotations") or {})
    if annotations:
        meta["annotations"] = annotations
    meta["ownerReferences"] = [owner_reference(policy)]
    return obj


def render_operand(
    operand: Operand, policy: XPUClusterPolicy, context: RenderContext
) -> RenderedOperand:
    if not operand.enabled(policy.spec):
        return RenderedOperand(operand.name, enabled=False)
    env = _environment()
    variables = _variables(policy, context)
    objects: list[dict[str, Any]] = []
    for name in _templates(operand.folder):
        try:
            text = env.get_template(name).render(variables)
            docs = [d for d in yaml.load_all(text, Loader=YAML_LOADER) if d]
        except (jinja2.TemplateError, yaml.YAMLError) as exc:
            raise RenderError(f"{name}: {exc}") from exc
        objects.extend(_stamp(d, policy, operand.name) for d in docs)
    return RenderedOperand(operand.name, enabled=True, objects=objects)


def render_operands(
    policy: XPUClusterPolicy, context: RenderContext | None = None
) -> list[RenderedOperand]:
    """Every operand in apply order; disabled ones with no objects."""
    context = context or RenderContext()
    return [render_operand(o, policy, context) for o in OPERANDS]


# Every kind the templates render: its resource name and whether it is namespaced. The
# operator's RBAC covers exactly these (and a template of another kind fails a unit test).
KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("apps/v1", "DaemonSet"): ("daemonsets", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): ("clusterroles", False),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ("clusterrolebindings", False),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitors", True),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): (
        "validatingadmissionpolicies",
        False,
    ),
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding"): (
        "validatingadmissionpolicybindings",
        False,
    ),
}


def object_path(obj: Mapping[str, Any]) -> str:
    """The API path of a rendered object, e.g. /apis/apps/v1/namespaces/openxpu/daemonsets/x."""
    api_version, kind = obj["apiVersion"], obj["kind"]
    resource, namespaced = KINDS[(api_version, kind)]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    meta = obj["metadata"]
    where = f"/namespaces/{meta['namespace']}" if namespaced else ""
    return f"{base}{where}/{resource}/{meta['name']}"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (scripts, config files) as literal blocks, readable in a diff."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(operands: list[RenderedOperand]) -> str:
    """All rendered objects as one multi-document YAML stream, each headed by its operand."""
    parts = []
    for operand in operands:
        for obj in operand.objects:
            body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100)
            parts.append(f"# operand: {operand.name}\n{body}")
    return "---\n".join(parts)
