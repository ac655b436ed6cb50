"""XPUClusterPolicy: the one custom resource that describes the whole OpenXPU stack.

These pydantic models are the single source of the CRD's schema (`openxpu_operator.crd`
generates it, with the CEL rules declared here next to the fields they guard) and of the
operator's own validation, so a policy the API server admits is a policy the operator reads.
Sections are named like NVIDIA's ClusterPolicy where they mean the same thing.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from openxpu_runtime.profiles import BUILTIN, DEFAULT_PROFILE, Profile, ProfileError

GROUP = "openxpu.io"
VERSION = "v1"
KIND = "XPUClusterPolicy"
PLURAL = "xpuclusterpolicies"
SINGULAR = "xpuclusterpolicy"
SHORT_NAMES = ("xcp",)
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_IMAGE = "openxpu/openxpu:dev"
DEFAULT_DRIVER_VERSION = "0.1.0"
BUILTIN_PROFILES: tuple[str, ...] = tuple(sorted(BUILTIN))

# The regular expressions are written once and used both here and in the CEL rules, so the
# API server and the operator refuse the same values.
VERSION_RE = r"^[0-9]+\.[0-9]+(\.[0-9]+)?([-+][0-9A-Za-z.-]+)?$"
PERCENT_RE = r"^(100|[1-9]?[0-9])%$"
DURATION_RE = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
PROFILE_NAME_RE = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
PROFILE_NAME_MAX = 40  # leaves room for "openxpu-driver-" in a DaemonSet name (63)
RESOURCE_RE = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# Positive: the device plugin refuses a zero memoryPerReplica (and would crash-loop).
QUANTITY_RE = r"^(even|none|0*[1-9][0-9]*(Ki|Mi|Gi|Ti|K|M|G|T)?)$"
IMAGE_RE = r"^[^\s]+$"
LABEL_KEY_RE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as `1s`, `500ms` or `1m30s` (the subset the CRD admits)."""
    if not re.match(DURATION_RE, text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 500ms or 1m30s")
    return sum(float(n) * _DURATION_UNIT[u] for n, u in _DURATION_PART.findall(text))


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    """One `x-kubernetes-validations` entry; `field_path` points the error at a child field."""
    entry = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def rules(*entries: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(entries)}


def _builtin_list() -> str:
    return "[" + ", ".join(f"'{n}'" for n in BUILTIN_PROFILES) + "]"


class Spec(BaseModel):
    """Base of every policy section: camelCase names as Kubernetes writes them, no unknown
    fields (the API server prunes them; the operator refuses them in files)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


_LABEL_MESSAGE = "must be a label name (prefix/name, at most 316 characters)"


def _check_label_keys(labels: dict[str, str]) -> dict[str, str]:
    # Keys are checked here and by the API server when an operand uses them: a CEL rule over
    # map keys costs too much for the CRD's budget (keys have no declared length).
    for key in labels:
        if len(key) > 316 or not re.match(LABEL_KEY_RE, key):
            raise ValueError(f"{key!r} {_LABEL_MESSAGE}")
    return labels


LabelValue = Annotated[
    str,
    Field(
        max_length=63,
        pattern=LABEL_VALUE_RE,
        description="A label value: at most 63 characters, alphanumeric at both ends.",
    ),
]
LabelMap = Annotated[
    dict[str, LabelValue],
    AfterValidator(_check_label_keys),
    Field(json_schema_extra={"maxProperties": 64}),
]
AnnotationMap = Annotated[dict[str, str], Field(json_schema_extra={"maxProperties": 64})]
Image = Annotated[
    str,
    Field(
        min_length=1,
        max_length=512,
        pattern=IMAGE_RE,
        description="Container image reference (repository[:tag][@digest]).",
    ),
]


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


def _image_field(what: str) -> Any:
    return Field(default=DEFAULT_IMAGE, description=f"Container image of the {what}.")


def _pull_policy_field() -> Any:
    return Field(
        default=PullPolicy.IF_NOT_PRESENT,
        description="When the kubelet pulls the image: Always, IfNotPresent or Never.",
    )


# -- operator, daemonsets -------------------------------------------------------------------


class ContainerRuntime(StrEnum):
    CONTAINERD = "containerd"
    CRIO = "crio"


class OperatorSpec(Spec):
    """Settings of the operator itself and of what it adds to every operand."""

    default_runtime: ContainerRuntime = Field(
        default=ContainerRuntime.CONTAINERD,
        description="The nodes' container runtime (containerd or crio): where the runtime "
        "reads CDI specs from.",
    )
    labels: LabelMap = Field(
        default_factory=dict, description="Labels added to every operand object and pod."
    )
    annotations: AnnotationMap = Field(
        default_factory=dict, description="Annotations added to every operand object and pod."
    )


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(Spec):
    """A toleration as in a pod spec."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.operator) || self.operator != 'Exists' || !has(self.value) "
                "|| self.value == ''",
                "a toleration with operator Exists must not have a value",
                ".value",
            ),
            cel(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                "tolerationSeconds applies only to effect NoExecute",
                ".tolerationSeconds",
            ),
        )
    )

    key: str | None = Field(
        default=None,
        max_length=316,
        description="Taint key; empty with operator Exists tolerates every taint.",
    )
    operator: TolerationOperator | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: TaintEffect | None = Field(
        default=None,
        description="NoSchedule, PreferNoSchedule or NoExecute; empty matches every effect.",
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="For NoExecute: how long the pod stays after the taint."
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator is TolerationOperator.EXISTS and self.value:
            raise ValueError("value: a toleration with operator Exists must not have a value")
        if self.toleration_seconds is not None and self.effect is not TaintEffect.NO_EXECUTE:
            raise ValueError("tolerationSeconds: applies only to effect NoExecute")
        return self


class UpdateStrategyType(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    ON_DELETE = "OnDelete"


def _int_or_percent_message(field: str) -> str:
    return f"{field} must be a count >= 0 or a percentage from 0% to 100%"


def int_or_percent(field: str) -> dict[str, Any]:
    """Schema of an int or a percentage, as Kubernetes writes maxUnavailable. It must say
    x-kubernetes-int-or-string (and no `type`), or the API server calls it non-structural."""
    return {
        "x-kubernetes-int-or-string": True,
        **rules(
            cel(
                f"type(self) == int ? self >= 0 : self.matches(r'{PERCENT_RE}')",
                _int_or_percent_message(field),
            )
        ),
    }


def _check_int_or_percent(value: int | str, field: str) -> int | str:
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and re.match(PERCENT_RE, value):
        return value
    raise ValueError(_int_or_percent_message(field))


class DaemonSetsSpec(Spec):
    """Settings shared by every operand DaemonSet (the driver's update strategy is its own:
    always OnDelete, so driver upgrades go node by node through the upgrade controller)."""

    labels: LabelMap = Field(default_factory=dict, description="Labels added to every operand pod.")
    annotations: AnnotationMap = Field(
        default_factory=dict, description="Annotations added to every operand pod."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Tolerations added to every operand pod, e.g. for tainted XPU nodes.",
    )
    priority_class_name: str = Field(
        default="system-node-critical",
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="PriorityClass of operand pods; node-critical so they are not evicted "
        "before the workloads that need them.",
    )
    update_strategy: UpdateStrategyType = Field(
        default=UpdateStrategyType.ROLLING_UPDATE,
        description="Update strategy of operand DaemonSets other than the driver: "
        "RollingUpdate or OnDelete.",
    )
    max_unavailable: int | str = Field(
        default=1,
        description="With RollingUpdate: how many (or what percentage of) nodes may update "
        "an operand at once.",
        json_schema_extra=int_or_percent("daemonsets.maxUnavailable"),
    )

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, value: int | str) -> int | str:
        return _check_int_or_percent(value, "daemonsets.maxUnavailable")


# -- driver ---------------------------------------------------------------------------------


class WaitForCompletionSpec(Spec):
    """Before a node's driver upgrade: wait for matching jobs to finish."""

    pod_selector: str = Field(
        default="",
        max_length=1024,
        description="Label selector of the pods to wait for; empty waits for none.",
    )
    timeout_seconds: int = Field(default=0, ge=0, description="How long to wait; 0 waits forever.")


class PodDeletionSpec(Spec):
    """Before a node's driver upgrade: delete the pods that use XPUs."""

    force: bool = Field(default=False, description="Delete pods not managed by a controller.")
    timeout_seconds: int = Field(
        default=300, ge=0, description="How long to wait for deletion; 0 waits forever."
    )
    delete_empty_dir: bool = Field(
        default=False, description="Also delete pods with emptyDir volumes (their data is lost)."
    )


class DrainSpec(Spec):
    """Before a node's driver upgrade: drain the node."""

    enable: bool = Field(default=False, description="Drain the node before upgrading.")
    force: bool = Field(default=False, description="Drain pods not managed by a controller.")
    pod_selector: str = Field(
        default="", max_length=1024, description="Label selector of the pods to drain."
    )
    timeout_seconds: int = Field(
        default=300, ge=0, description="How long the drain may take; 0 waits forever."
    )
    delete_empty_dir: bool = Field(
        default=False, description="Also drain pods with emptyDir volumes (their data is lost)."
    )


class UpgradePolicySpec(Spec):
    """How driver upgrades roll across nodes (node label openxpu.io/driver-upgrade-state)."""

    auto_upgrade: bool = Field(
        default=True, description="Upgrade nodes when the driver's version or image changes."
    )
    max_parallel_upgrades: int = Field(
        default=1, ge=0, description="Nodes upgraded at once; 0 means no limit."
    )
    max_unavailable: int | str = Field(
        default="25%",
        description="XPU nodes that may be unavailable during upgrades: a count or a "
        "percentage of XPU nodes.",
        json_schema_extra=int_or_percent("driver.upgradePolicy.maxUnavailable"),
    )
    wait_for_completion: WaitForCompletionSpec = Field(
        default_factory=WaitForCompletionSpec,
        description="Wait for matching jobs to finish before upgrading a node.",
    )
    pod_deletion: PodDeletionSpec = Field(
        default_factory=PodDeletionSpec,
        description="Delete pods that use XPUs before upgrading a node.",
    )
    drain: DrainSpec = Field(
        default_factory=DrainSpec, description="Drain the node before upgrading it."
    )

    @field_validator("max_unavailable")
    @classmethod
    def _max_unavailable(cls, value: int | str) -> int | str:
        return _check_int_or_percent(value, "driver.upgradePolicy.maxUnavailable")


class DriverSpec(Spec):
    """The emulated XPU driver: installs the runtime on the host, creates /dev/xpuN, runs
    xpud. The only privileged operand. One DaemonSet per emulation profile in use."""

    enabled: bool = Field(default=True, description="Deploy the driver on XPU nodes.")
    image: Image = _image_field("driver")
    image_pull_policy: PullPolicy = _pull_policy_field()
    version: str = Field(
        default=DEFAULT_DRIVER_VERSION,
        max_length=64,
        description="Driver version to install (reported as openxpu.io/driver.version), "
        "like 1.2.3.",
        json_schema_extra=rules(
            cel(
                f"self.matches(r'{VERSION_RE}')",
                "driver.version must be a version such as 1.2.3 or 1.2.3-rc.1",
            )
        ),
    )
    profile: str | None = Field(
        default=None,
        max_length=PROFILE_NAME_MAX,
        description="Emulation profile for every XPU node, overriding emulation.nodePools "
        "and emulation.defaultProfile: a built-in profile or one in emulation.profiles.",
    )
    upgrade_policy: UpgradePolicySpec = Field(
        default_factory=UpgradePolicySpec,
        description="How driver upgrades roll across nodes.",
    )
    nvidia_compat: bool = Field(
        default=True,
        description="Install libnvidia-ml.so.1 (NVML's C ABI) and nvidia-smi with the driver, "
        "so NVIDIA's tools work unchanged; the device plugin mounts them into XPU containers. "
        "Takes effect when a node's driver is next installed.",
    )

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not re.match(VERSION_RE, value):
            raise ValueError("must be a version such as 1.2.3 or 1.2.3-rc.1")
        return value


# -- cdi, device plugin, feature discovery --------------------------------------------------


class CdiSpec(Spec):
    """Container Device Interface: the runtime injects XPUs from the spec
    /var/run/cdi/openxpu.io-xpu.yaml, written by the device plugin."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.enabled) || !has(self.default) || self.enabled || !self.default",
                "cdi.default requires cdi.enabled",
                ".default",
            )
        )
    )

    enabled: bool = Field(default=True, description="Prepare the nodes for CDI injection.")
    default: bool = Field(
        default=False,
        description="Make CDI the only way devices reach containers: the device plugin "
        "answers with CDI names only (deviceListStrategy [cdi]).",
    )
    image: Image = _image_field("CDI operand")
    image_pull_policy: PullPolicy = _pull_policy_field()

    @model_validator(mode="after")
    def _default_needs_enabled(self) -> CdiSpec:
        if self.default and not self.enabled:
            raise ValueError("default: requires cdi.enabled")
        return self


class DeviceListStrategy(StrEnum):
    ENVVAR = "envvar"
    DEVICE_SPECS = "device-specs"
    CDI = "cdi"


class DeviceIDStrategy(StrEnum):
    UUID = "uuid"
    INDEX = "index"


class AllocationPolicy(StrEnum):
    DISTRIBUTED = "distributed"
    PACKED = "packed"


class PluginFlags(Spec):
    """The device plugin's flags section (its config file, version v1)."""

    resource_name: str = Field(
        default="openxpu.io/xpu",
        max_length=253,
        description="Extended resource the plugin advertises, like openxpu.io/xpu.",
        json_schema_extra=rules(
            cel(
                f"self.matches(r'{RESOURCE_RE}')",
                "resourceName must be an extended resource name like openxpu.io/xpu",
            ),
            cel(
                "!(self.split('/')[0] in ['kubernetes.io', 'k8s.io'])",
                "resourceName: the kubernetes.io and k8s.io domains are reserved",
            ),
        ),
    )
    device_list_strategy: list[DeviceListStrategy] = Field(
        default_factory=lambda: [DeviceListStrategy.ENVVAR, DeviceListStrategy.DEVICE_SPECS],
        min_length=1,
        max_length=3,
        description="How devices reach a container: envvar (XPU_VISIBLE_DEVICES), "
        "device-specs (device nodes), cdi (CDI names, needs cdi.enabled).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    device_id_strategy: DeviceIDStrategy = Field(
        default=DeviceIDStrategy.UUID,
        alias="deviceIDStrategy",
        description="Devices named to containers by uuid or index.",
    )
    plugin_dir: str = Field(
        default="/var/lib/kubelet/device-plugins",
        min_length=1,
        max_length=1024,
        pattern=r"^/",
        description="The kubelet's device-plugin directory on the host.",
    )
    xpud_socket: str = Field(
        default="/run/openxpu/xpud.sock",
        min_length=1,
        max_length=1024,
        pattern=r"^/run/openxpu/",
        description="xpud's API socket on the host (under /run/openxpu/).",
    )
    cdi_spec_dir: str = Field(
        default="/var/run/cdi",
        min_length=1,
        max_length=1024,
        pattern=r"^/",
        description="Where the CDI spec is written on the host.",
    )
    pod_resources_socket: str = Field(
        default="/var/lib/kubelet/pod-resources/kubelet.sock",
        min_length=2,
        max_length=1024,
        pattern=r"^/.+/[^/]+$",
        description="The kubelet's PodResources socket on the host: the plugin deletes the "
        "xpud scopes of containers that are gone.",
    )
    scope_grace_period: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="Seconds a scope may go unheld by any container (Allocate to container "
        "start) before the plugin deletes it.",
    )

    @field_validator("resource_name")
    @classmethod
    def _resource(cls, value: str) -> str:
        if not re.match(RESOURCE_RE, value):
            raise ValueError("must be an extended resource name like openxpu.io/xpu")
        if value.split("/", 1)[0] in ("kubernetes.io", "k8s.io"):
            raise ValueError("the kubernetes.io and k8s.io domains are reserved")
        return value

    @field_validator("device_list_strategy")
    @classmethod
    def _unique(cls, value: list[DeviceListStrategy]) -> list[DeviceListStrategy]:
        if len(set(value)) != len(value):
            raise ValueError("deviceListStrategy must not repeat a strategy")
        return value


class TimeSlicing(Spec):
    """Time-slicing: each XPU advertised as `replicas` schedulable replicas."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.replicas) || self.replicas >= 2 || "
                "((!has(self.renameByDefault) || !self.renameByDefault) && "
                "(!has(self.failRequestsGreaterThanOne) || !self.failRequestsGreaterThanOne))",
                "sharing.timeSlicing.replicas must be at least 2 when renameByDefault or "
                "failRequestsGreaterThanOne is set",
                ".replicas",
            )
        )
    )

    replicas: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Replicas per XPU; 1 turns sharing off, 2 or more shares each XPU.",
    )
    rename_by_default: bool = Field(
        default=False,
        description="Advertise replicas as <resourceName>.shared instead of <resourceName>.",
    )
    fail_requests_greater_than_one: bool = Field(
        default=False, description="Refuse pods that request more than one replica."
    )
    memory_per_replica: str = Field(
        default="even",
        max_length=32,
        pattern=QUANTITY_RE,
        description='Memory cap per replica: "even" (device memory / replicas), "none", or '
        "a quantity such as 4Gi.",
    )
    allocation_policy: AllocationPolicy = Field(
        default=AllocationPolicy.DISTRIBUTED,
        description="distributed spreads replicas over devices; packed fills one device first.",
    )

    @model_validator(mode="after")
    def _sharing_needs_replicas(self) -> TimeSlicing:
        if self.replicas < 2 and (self.rename_by_default or self.fail_requests_greater_than_one):
            raise ValueError(
                "replicas: must be at least 2 when renameByDefault or "
                "failRequestsGreaterThanOne is set"
            )
        return self


class Sharing(Spec):
    """How one XPU is shared between containers."""

    time_slicing: TimeSlicing = Field(
        default_factory=TimeSlicing, description="Time-slicing settings."
    )


class PluginConfig(Spec):
    """The device plugin's configuration file, version v1 (see docs/device-plugin.md)."""

    version: Literal["v1"] = Field(default="v1", description="Config file version: v1.")
    flags: PluginFlags = Field(default_factory=PluginFlags, description="Plugin flags.")
    sharing: Sharing = Field(default_factory=Sharing, description="XPU sharing.")

    @property
    def advertised_resource(self) -> str:
        ts = self.sharing.time_slicing
        if ts.replicas > 1 and ts.rename_by_default:
            return f"{self.flags.resource_name}.shared"
        return self.flags.resource_name


class DevicePluginSpec(Spec):
    """The kubelet device plugin: advertises openxpu.io/xpu on every XPU node."""

    enabled: bool = Field(default=True, description="Deploy the device plugin.")
    image: Image = _image_field("device plugin")
    image_pull_policy: PullPolicy = _pull_policy_field()
    config: PluginConfig = Field(
        default_factory=PluginConfig,
        description="The plugin's v1 configuration file, including sharing.",
    )


class FeatureDiscoverySpec(Spec):
    """Feature discovery: labels each XPU node with openxpu.io/xpu.product, .count, .memory..."""

    enabled: bool = Field(default=True, description="Deploy feature discovery.")
    image: Image = _image_field("feature discovery")
    image_pull_policy: PullPolicy = _pull_policy_field()
    interval_seconds: int = Field(
        default=60, ge=5, le=3600, description="How often node labels are refreshed, seconds."
    )


# -- exporter -------------------------------------------------------------------------------


class ServiceMonitorSpec(Spec):
    """A Prometheus Operator ServiceMonitor for the exporter."""

    enabled: bool = Field(
        default=False, description="Create a ServiceMonitor (needs the Prometheus Operator's CRDs)."
    )
    interval: str = Field(
        default="15s",
        max_length=32,
        description="Scrape interval, a duration like 15s.",
        json_schema_extra=rules(
            cel(
                f"self.matches(r'{DURATION_RE}') && duration(self) >= duration('1s') "
                "&& duration(self) <= duration('1h')",
                "exporter.serviceMonitor.interval must be a duration from 1s to 1h, like 15s",
            )
        ),
    )
    additional_labels: LabelMap = Field(
        default_factory=dict,
        description="Labels on the ServiceMonitor, e.g. for a Prometheus serviceMonitorSelector.",
    )
    honor_labels: bool = Field(
        default=False, description="Keep the exporter's labels when they clash with target labels."
    )

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        seconds = parse_duration(value)
        if not 1 <= seconds <= 3600:
            raise ValueError(
                "exporter.serviceMonitor.interval must be a duration from 1s to 1h, like 15s"
            )
        return value


class ExporterSpec(Spec):
    """The Prometheus exporter (like dcgm-exporter), metrics on :9400."""

    enabled: bool = Field(default=True, description="Deploy the exporter.")
    image: Image = _image_field("exporter")
    image_pull_policy: PullPolicy = _pull_policy_field()
    dcgm_compat: bool = Field(
        default=False,
        description="Also emit dcgm-exporter's metric names and labels (DCGM_FI_*), so "
        "dashboards written for NVIDIA GPUs work unchanged.",
    )
    refresh_interval: str = Field(
        default="1s",
        max_length=32,
        description="How often the exporter reads xpud, a duration; 0s reads on every scrape.",
        json_schema_extra=rules(
            cel(
                f"self.matches(r'{DURATION_RE}') && duration(self) <= duration('5m')",
                "exporter.refreshInterval must be a duration from 0s to 5m, like 1s",
            )
        ),
    )
    port: int = Field(default=9400, ge=1, le=65535, description="Metrics port.")
    service_monitor: ServiceMonitorSpec = Field(
        default_factory=ServiceMonitorSpec, description="Prometheus Operator ServiceMonitor."
    )

    @field_validator("refresh_interval")
    @classmethod
    def _refresh(cls, value: str) -> str:
        if parse_duration(value) > 300:
            raise ValueError("must be a duration from 0s to 5m, like 1s")
        return value

    @property
    def refresh_seconds(self) -> float:
        return parse_duration(self.refresh_interval)


# -- validator ------------------------------------------------------------------------------


class WorkloadValidationSpec(Spec):
    """The last operand: a pod per XPU node that runs a real workload on one XPU."""

    enabled: bool = Field(default=True, description="Run the workload validation.")
    image: Image | None = Field(
        default=None, description="Image of the workload; defaults to validator.image."
    )
    command: list[Annotated[str, Field(max_length=1024)]] = Field(
        default_factory=lambda: ["xpu-vectoradd"],
        min_length=1,
        max_length=32,
        description="Command of the workload; it must exit 0 when the XPU works.",
    )


class ValidatorSpec(Spec):
    """Validation: the node-local barriers (driver, CDI) and the workload validation."""

    enabled: bool = Field(
        default=True,
        description="Validate the driver on each node before the operands that need it start.",
    )
    image: Image = _image_field("validator")
    image_pull_policy: PullPolicy = _pull_policy_field()
    workload: WorkloadValidationSpec = Field(
        default_factory=WorkloadValidationSpec,
        description="The workload validation: xpu-vectoradd on one XPU per node.",
    )


# -- emulation ------------------------------------------------------------------------------


class EmulationProfile(Spec):
    """An emulated hardware profile: a built-in one (`base`) with fields changed."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                f"!has(self.base) || self.base in {_builtin_list()}",
                f"base must be a built-in profile: {', '.join(BUILTIN_PROFILES)}",
                ".base",
            ),
            cel(
                "!has(self.tdpWatts) || !has(self.idleWatts) || self.tdpWatts > self.idleWatts",
                "tdpWatts must exceed idleWatts",
                ".tdpWatts",
            ),
            cel(
                "!has(self.devices) || !has(self.linkGroups) || self.devices == 0 "
                "|| self.devices % self.linkGroups == 0",
                "devices must be a multiple of linkGroups",
                ".devices",
            ),
        )
    )

    base: str = Field(
        default=DEFAULT_PROFILE,
        max_length=PROFILE_NAME_MAX,
        description=f"Built-in profile this one starts from: {', '.join(BUILTIN_PROFILES)}.",
    )
    product: str | None = Field(
        default=None, max_length=96, description="Product name, as xpu-smi shows it."
    )
    family: str | None = Field(
        default=None, max_length=32, pattern=r"^[a-z0-9][-a-z0-9]*$", description="Family."
    )
    devices: int | None = Field(default=None, ge=0, le=1024, description="XPUs per node.")
    memory_mib: int | None = Field(
        default=None, alias="memoryMiB", ge=1, le=16777216, description="Memory per XPU, MiB."
    )
    compute_units: int | None = Field(
        default=None, ge=1, le=65536, description="Compute units per XPU."
    )
    tdp_watts: float | None = Field(
        default=None, gt=0, le=10000, description="Power limit per XPU, watts."
    )
    idle_watts: float | None = Field(
        default=None, ge=0, le=10000, description="Idle power per XPU, watts."
    )
    link_groups: int | None = Field(
        default=None, ge=1, le=1024, description="Link groups (devices linked to each other)."
    )
    numa_nodes: int | None = Field(default=None, ge=1, le=64, description="NUMA nodes.")

    @model_validator(mode="after")
    def _consistent(self) -> EmulationProfile:
        if self.base not in BUILTIN:
            raise ValueError(f"base: must be a built-in profile: {', '.join(BUILTIN_PROFILES)}")
        tdp, idle = self.tdp_watts, self.idle_watts
        if tdp is not None and idle is not None and tdp <= idle:
            raise ValueError("tdpWatts: must exceed idleWatts")
        if self.devices and self.link_groups and self.devices % self.link_groups:
            raise ValueError("devices: must be a multiple of linkGroups")
        try:
            self.resolve("custom")
        except ProfileError as exc:
            # A field changed against the base's values, e.g. tdpWatts below its idleWatts.
            raise ValueError(f"{exc} (after applying the changes to base {self.base})") from None
        return self

    def resolve(self, name: str) -> Profile:
        """The runtime's profile this describes (checked as xpud will check it)."""
        changes = {
            "name": name,
            "product": self.product,
            "family": self.family,
            "count": self.devices,
            "memory_mib": self.memory_mib,
            "compute_units": self.compute_units,
            "tdp_watts": self.tdp_watts,
            "idle_watts": self.idle_watts,
            "link_groups": self.link_groups,
            "numa_nodes": self.numa_nodes,
        }
        data = BUILTIN[self.base].to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return Profile.from_dict(data)


class NodePool(Spec):
    """Nodes selected by labels carry one emulation profile."""

    name: str = Field(
        max_length=63, pattern=PROFILE_NAME_RE, description="Name of the pool (unique)."
    )
    node_selector: LabelMap = Field(
        description="Labels a node must carry to be in this pool.",
        json_schema_extra={"minProperties": 1},
    )
    profile: str = Field(
        max_length=PROFILE_NAME_MAX,
        description="The pool's profile: a built-in one or a name in emulation.profiles.",
    )

    @field_validator("node_selector")
    @classmethod
    def _not_empty(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("nodeSelector must name at least one label")
        return value


def _profile_ref(name: str, emulation: str = "self") -> str:
    """CEL: `name` is a built-in profile or one defined in the emulation section."""
    present = f"has({emulation}.profiles)"
    if emulation != "self":
        present = f"has({emulation}) && {present}"
    return f"{name} in {_builtin_list()} || ({present} && {name} in {emulation}.profiles)"


class EmulationSpec(Spec):
    """Emulated hardware: which profile each XPU node carries (like fake-gpu-operator's
    topology). The first node pool whose nodeSelector matches a node wins; other XPU nodes
    get defaultProfile. The operator writes the result as openxpu.io/emulation.profile."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.nodePools) || self.nodePools.all(p, " + _profile_ref("p.profile") + ")",
                "emulation.nodePools[].profile must name a profile in emulation.profiles or "
                f"a built-in one ({', '.join(BUILTIN_PROFILES)})",
                ".nodePools",
            ),
            cel(
                "!has(self.defaultProfile) || " + _profile_ref("self.defaultProfile"),
                "emulation.defaultProfile must name a profile in emulation.profiles or a "
                f"built-in one ({', '.join(BUILTIN_PROFILES)})",
                ".defaultProfile",
            ),
        )
    )

    default_profile: str = Field(
        default=DEFAULT_PROFILE,
        max_length=PROFILE_NAME_MAX,
        description="Profile of XPU nodes that no node pool selects.",
    )
    profiles: dict[str, EmulationProfile] = Field(
        default_factory=dict,
        description="Custom profiles by name (a DNS label, not a built-in name).",
        json_schema_extra={
            "maxProperties": 32,
            **rules(
                cel(
                    f"self.all(k, k.size() <= {PROFILE_NAME_MAX} && "
                    f"k.matches(r'{PROFILE_NAME_RE}') && !(k in {_builtin_list()}))",
                    f"emulation.profiles names must be DNS labels of at most {PROFILE_NAME_MAX} "
                    f"characters and not a built-in name ({', '.join(BUILTIN_PROFILES)})",
                )
            ),
        },
    )
    node_pools: list[NodePool] = Field(
        default_factory=list,
        max_length=64,
        description="Node pools in order of precedence.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    def known_profiles(self) -> set[str]:
        return set(BUILTIN) | set(self.profiles)

    @model_validator(mode="after")
    def _references(self) -> EmulationSpec:
        known = self.known_profiles()
        for name in self.profiles:
            if not re.match(PROFILE_NAME_RE, name) or len(name) > PROFILE_NAME_MAX:
                raise ValueError(f"profiles: {name!r} is not a DNS label of at most 40 characters")
            if name in BUILTIN:
                raise ValueError(f"profiles: {name!r} is a built-in profile name")
        builtins = ", ".join(BUILTIN_PROFILES)
        for pool in self.node_pools:
            if pool.profile not in known:
                raise ValueError(
                    f"nodePools: pool {pool.name!r}: profile {pool.profile!r} must name a "
                    f"profile in emulation.profiles or a built-in one ({builtins})"
                )
        if self.default_profile not in known:
            raise ValueError(
                f"defaultProfile: {self.default_profile!r} must name a profile in "
                f"emulation.profiles or a built-in one ({builtins})"
            )
        names = [p.name for p in self.node_pools]
        if len(set(names)) != len(names):
            raise ValueError("nodePools: pool names must be unique")
        return self

    def pool_profile(self, node_labels: dict[str, str]) -> str:
        """The profile a node with these labels carries: the first matching pool's, else
        the default."""
        for pool in self.node_pools:
            if all(node_labels.get(k) == v for k, v in pool.node_selector.items()):
                return pool.profile
        return self.default_profile


# -- the policy -----------------------------------------------------------------------------


class XPUClusterPolicySpec(Spec):
    """The desired XPU stack. Every section has defaults: `spec: {}` deploys everything."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            cel(
                "!has(self.driver) || !has(self.driver.profile) || "
                + _profile_ref("self.driver.profile", "self.emulation"),
                "driver.profile must name a profile in emulation.profiles or a built-in one "
                f"({', '.join(BUILTIN_PROFILES)})",
                ".driver.profile",
            ),
            cel(
                "!has(self.devicePlugin) || !has(self.devicePlugin.config) || "
                "!has(self.devicePlugin.config.flags) || "
                "!('cdi' in self.devicePlugin.config.flags.deviceListStrategy) || "
                "!has(self.cdi) || self.cdi.enabled",
                "devicePlugin.config.flags.deviceListStrategy may list cdi only when "
                "cdi.enabled is true",
                ".devicePlugin.config.flags.deviceListStrategy",
            ),
        )
    )

    operator: OperatorSpec = Field(
        default_factory=OperatorSpec, description="The operator and what it adds to operands."
    )
    daemonsets: DaemonSetsSpec = Field(
        default_factory=DaemonSetsSpec, description="Settings shared by operand DaemonSets."
    )
    driver: DriverSpec = Field(default_factory=DriverSpec, description="The emulated XPU driver.")
    cdi: CdiSpec = Field(default_factory=CdiSpec, description="Container Device Interface.")
    device_plugin: DevicePluginSpec = Field(
        default_factory=DevicePluginSpec, description="The kubelet device plugin."
    )
    feature_discovery: FeatureDiscoverySpec = Field(
        default_factory=FeatureDiscoverySpec, description="Node labels describing the XPUs."
    )
    exporter: ExporterSpec = Field(
        default_factory=ExporterSpec, description="The Prometheus exporter."
    )
    validator: ValidatorSpec = Field(
        default_factory=ValidatorSpec, description="Driver and workload validation."
    )
    emulation: EmulationSpec = Field(
        default_factory=EmulationSpec, description="Emulated XPU hardware per node pool."
    )
    node_selector: LabelMap = Field(
        default_factory=dict,
        description="Labels a node must carry to be an XPU node; empty selects every node.",
    )

    @model_validator(mode="after")
    def _cross_section(self) -> XPUClusterPolicySpec:
        profile = self.driver.profile
        if profile is not None and profile not in self.emulation.known_profiles():
            raise ValueError(
                f"driver.profile: {profile!r} must name a profile in emulation.profiles or a "
                f"built-in one ({', '.join(BUILTIN_PROFILES)})"
            )
        strategies = self.device_plugin.config.flags.device_list_strategy
        if DeviceListStrategy.CDI in strategies and not self.cdi.enabled:
            raise ValueError(
                "devicePlugin.config.flags.deviceListStrategy: may list cdi only when "
                "cdi.enabled is true"
            )
        return self

    def node_profile(self, node_labels: dict[str, str]) -> str:
        """The emulation profile a node with these labels carries."""
        return self.driver.profile or self.emulation.pool_profile(node_labels)

    def profiles_in_use(self) -> list[str]:
        """Profiles that get a driver DaemonSet: the override, else every pool's and the
        default, in a stable order."""
        if self.driver.profile:
            return [self.driver.profile]
        seen = [p.profile for p in self.emulation.node_pools] + [self.emulation.default_profile]
        return list(dict.fromkeys(seen))


# -- status ---------------------------------------------------------------------------------


class PolicyState(StrEnum):
    READY = "ready"
    NOT_READY = "notReady"
    IGNORED = "ignored"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Spec):
    """A status condition, as metav1.Condition."""

    type: str = Field(max_length=316, description="Condition type, e.g. Ready, DriverReady.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="", max_length=1024, description="CamelCase reason, e.g. OperandNotReady."
    )
    message: str = Field(default="", max_length=32768, description="What is wrong, for people.")
    last_transition_time: str | None = Field(
        default=None, description="When status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The policy generation this condition describes."
    )


class OperandStatus(Spec):
    """One operand's rollout, from its DaemonSets (or Jobs)."""

    name: str = Field(description="Operand name, e.g. driver, device-plugin.")
    enabled: bool = Field(default=True, description="Whether the policy enables it.")
    desired: int = Field(default=0, ge=0, description="Pods that should run.")
    ready: int = Field(default=0, ge=0, description="Pods that are ready.")
    updated: int = Field(default=0, ge=0, description="Pods running the current template.")
    reason: str = Field(default="", description="Why it is not ready, CamelCase.")
    message: str = Field(default="", description="Details: first failing node or pod.")


class NodeStatus(Spec):
    """An XPU node that is not ready, and why."""

    name: str = Field(description="Node name.")
    profile: str = Field(default="", description="Emulation profile the node carries.")
    ready: bool = Field(default=False, description="Every enabled operand is ready on it.")
    reason: str = Field(default="", description="Why not, CamelCase.")
    message: str = Field(default="", description="Details, e.g. the scheduler's message.")


class NodesSummary(Spec):
    """XPU nodes: how many, how many ready, and the ones that are not."""

    total: int = Field(default=0, ge=0, description="XPU nodes.")
    ready: int = Field(default=0, ge=0, description="XPU nodes with every operand ready.")
    not_ready: list[NodeStatus] = Field(
        default_factory=list, description="Nodes that are not ready, with the reason."
    )


class UpgradeNodeStatus(Spec):
    """A node whose driver upgrade is not done: its state and what it waits for."""

    name: str = Field(description="Node name.")
    state: str = Field(description="Its openxpu.io/driver-upgrade-state, e.g. drain-required.")
    reason: str = Field(default="", description="What it waits for, or why it failed.")


class UpgradeSummary(Spec):
    """The driver upgrade across XPU nodes (node label openxpu.io/driver-upgrade-state)."""

    counts: dict[str, int] = Field(
        default_factory=dict, description="XPU nodes per upgrade state (every state, 0 included)."
    )
    nodes: list[UpgradeNodeStatus] = Field(
        default_factory=list,
        description="Nodes upgrading, waiting to start or failed, with what each waits for.",
    )
    held: str = Field(default="", description="Why no further node may start, if so.")


class XPUClusterPolicyStatus(Spec):
    """What the operator observed. Open to fields kopf writes (its progress storage)."""

    model_config = ConfigDict(
        extra="allow", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )

    state: PolicyState | None = Field(default=None, description="ready, notReady or ignored.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The policy generation last reconciled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, Error and one per operand (DriverReady, DevicePluginReady, ...).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    operands: list[OperandStatus] = Field(
        default_factory=list, description="Per-operand rollout, in operand order."
    )
    operands_ready: str = Field(
        default="", description="Ready operands over enabled operands, e.g. 5/5."
    )
    nodes: NodesSummary = Field(default_factory=NodesSummary, description="XPU nodes.")
    nodes_ready: str = Field(default="", description="Ready XPU nodes over XPU nodes, e.g. 3/3.")
    active_policy: str | None = Field(
        default=None, description="When ignored: the name of the active policy."
    )
    upgrade: UpgradeSummary | None = Field(
        default=None, description="The driver upgrade across nodes (docs/upgrades.md)."
    )


class XPUClusterPolicy(Spec):
    """XPUClusterPolicy describes the OpenXPU stack the operator deploys on XPU nodes."""

    api_version: Literal["openxpu.io/v1"] = Field(default="openxpu.io/v1", alias="apiVersion")
    kind: Literal["XPUClusterPolicy"] = "XPUClusterPolicy"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: XPUClusterPolicySpec = Field(default_factory=XPUClusterPolicySpec)
    status: XPUClusterPolicyStatus | None = None


class PolicyError(ValueError):
    """A policy the operator cannot use; the message names the field."""


def load_policy(data: object) -> XPUClusterPolicy:
    """Validate a policy object (as read from YAML or the API), or raise PolicyError naming
    each bad field."""
    try:
        return XPUClusterPolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(describe(exc)) from None


# A model-level check names its field first ("replicas: must be ..."); joined to the model's
# location it reads like a field-level error: spec.devicePlugin....timeSlicing.replicas: ...
_FIELD_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)*): ")


def describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        m = _FIELD_PREFIX.match(msg)
        if m:
            loc, msg = f"{loc}.{m.group(1)}" if loc else m.group(1), msg[m.end() :]
        problems.append(f"{loc or '(top level)'}: {msg}")
    return "invalid XPUClusterPolicy: " + "; ".join(problems)
