"""The plugin's configuration: a versioned file (`version: v1`), overridden by environment
variables (OPENXPU_DEVICE_PLUGIN_*), overridden by command-line flags — the same precedence as
NVIDIA's plugin, through the settings mechanism every OpenXPU component shares.

A bad value is rejected with a message naming the field (as written in the file) and where
the value came from; the caller keeps the last good configuration in force.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openxpu_runtime.settings import Layers, Setting, SettingsError

DEFAULT_RESOURCE = "openxpu.io/xpu"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_XPUD_SOCKET = "/run/openxpu/xpud.sock"
DEFAULT_CDI_SPEC_DIR = "/var/run/cdi"
DEFAULT_POD_RESOURCES_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The installed driver version's files, as xpu-driver lays them out (`current` follows upgrades).
DEFAULT_DRIVER_ROOT = "/opt/openxpu/driver/current"

# An extended resource name: a DNS subdomain prefix, then a name the kubelet accepts.
_RESOURCE_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


# A configuration that cannot be used; the message names the field and its source.
ConfigError = SettingsError


class DeviceListStrategy(StrEnum):
    # XPU_VISIBLE_DEVICES plus the xpud socket mount: enough for workloads, which reach
    # devices through xpud.
    ENVVAR = "envvar"
    # Device nodes as DeviceSpecs (or bind mounts, for emulated nodes that are plain files).
    DEVICE_SPECS = "device-specs"
    # CDI device names `openxpu.io/xpu=<uuid>`, resolved by the container runtime.
    CDI = "cdi"


class DeviceIDStrategy(StrEnum):
    UUID = "uuid"
    INDEX = "index"


class AllocationPolicy(StrEnum):
    # Spread replicas over as many devices as possible (least-shared first).
    DISTRIBUTED = "distributed"
    # Fill one device's replicas before touching the next.
    PACKED = "packed"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TimeSlicing(_Strict):
    replicas: int = Field(default=1, ge=1, le=1024)
    rename_by_default: bool = Field(default=False, alias="renameByDefault")
    fail_requests_greater_than_one: bool = Field(default=False, alias="failRequestsGreaterThanOne")
    # Memory cap per replica: "even" splits each device's memory between its replicas,
    # "none" leaves replicas uncapped, or a quantity ("4Gi", bytes as an integer).
    memory_per_replica: str = Field(default="even", alias="memoryPerReplica")
    allocation_policy: AllocationPolicy = Field(
        default=AllocationPolicy.DISTRIBUTED, alias="allocationPolicy"
    )

    @field_validator("memory_per_replica", mode="before")
    @classmethod
    def _memory(cls, value: object) -> str:
        text = str(value).strip()
        if text in ("even", "none"):
            return text
        try:
            parse_quantity(text)
        except ValueError:
            raise ValueError(
                'must be "even", "none" or a positive quantity such as 4Gi, 1.5G or 512Mi'
            ) from None
        return text


class Sharing(_Strict):
    time_slicing: TimeSlicing = Field(default_factory=TimeSlicing, alias="timeSlicing")


class Flags(_Strict):
    resource_name: str = Field(default=DEFAULT_RESOURCE, alias="resourceName")
    device_list_strategy: tuple[DeviceListStrategy, ...] = Field(
        default=(DeviceListStrategy.ENVVAR, DeviceListStrategy.DEVICE_SPECS),
        alias="deviceListStrategy",
        min_length=1,
    )
    device_id_strategy: DeviceIDStrategy = Field(
        default=DeviceIDStrategy.UUID, alias="deviceIDStrategy"
    )
    plugin_dir: str = Field(default=DEFAULT_PLUGIN_DIR, alias="pluginDir", min_length=1)
    xpud_socket: str = Field(default=DEFAULT_XPUD_SOCKET, alias="xpudSocket", min_length=1)
    cdi_spec_dir: str = Field(default=DEFAULT_CDI_SPEC_DIR, alias="cdiSpecDir", min_length=1)
    # Scopes are reconciled against the kubelet's PodResources List: one whose devices no
    # container holds for this long is deleted. It covers Allocate -> container created.
    pod_resources_socket: str = Field(
        default=DEFAULT_POD_RESOURCES_SOCKET, alias="podResourcesSocket", min_length=1
    )
    scope_grace_period: float = Field(default=60.0, alias="scopeGracePeriod", gt=0, le=86_400)
    # libnvidia-ml.so.1 and nvidia-smi from the driver root into every XPU container.
    nvidia_compat: bool = Field(default=True, alias="nvidiaCompat")
    driver_root: str = Field(
        default=DEFAULT_DRIVER_ROOT, alias="driverRoot", min_length=2, pattern=r"^/"
    )

    @field_validator("resource_name")
    @classmethod
    def _resource(cls, value: str) -> str:
        if not _RESOURCE_RE.match(value) or len(value) > 253:
            raise ValueError(f"{value!r} is not an extended resource name like openxpu.io/xpu")
        if value.split("/", 1)[0] in ("kubernetes.io", "k8s.io"):
            raise ValueError("the kubernetes.io domain is reserved")
        return value

    @field_validator("device_list_strategy", mode="before")
    @classmethod
    def _strategies(cls, value: object) -> object:
        # Env vars and flags carry a list as "envvar,cdi"; the file may use either form.
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value


class HealthChecks(_Strict):
    # NVIDIA's DP_DISABLE_HEALTHCHECKS: "all" advertises every known device Healthy whatever
    # xpud says (even while xpud is unreachable); a list of fault codes (like XIDs) leaves
    # those faults out of a device's health, the others still count.
    disable_health_checks: Literal["all"] | tuple[int, ...] = Field(
        default=(), alias="disableHealthChecks"
    )

    @field_validator("disable_health_checks", mode="before")
    @classmethod
    def _codes(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if text == "all":
            return "all"
        try:
            return tuple(int(c) for c in text.split(",") if c.strip())
        except ValueError:
            raise ValueError(f'must be "all" or fault codes such as 48,94, not {value!r}') from None

    @property
    def all_disabled(self) -> bool:
        return self.disable_health_checks == "all"

    @property
    def ignored_fault_codes(self) -> frozenset[int]:
        codes = self.disable_health_checks
        return frozenset() if codes == "all" else frozenset(codes)


class Config(_Strict):
    version: str
    flags: Flags = Field(default_factory=Flags)
    sharing: Sharing = Field(default_factory=Sharing)
    health: HealthChecks = Field(default_factory=HealthChecks)

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value != "v1":
            raise ValueError(f"unsupported version {value!r}; this plugin reads v1")
        return value

    @property
    def replicas(self) -> int:
        return self.sharing.time_slicing.replicas

    @property
    def shared(self) -> bool:
        return self.replicas > 1

    @property
    def advertised_resource(self) -> str:
        """The resource the kubelet sees: `.shared` appended when replicas are renamed."""
        name = self.flags.resource_name
        if self.shared and self.sharing.time_slicing.rename_by_default:
            return f"{name}.shared"
        return name

    def memory_limit_per_replica(self, device_memory: int) -> int | None:
        if not self.shared:
            return None
        spec = self.sharing.time_slicing.memory_per_replica
        if spec == "none":
            return None
        if spec == "even":
            return device_memory // self.replicas
        return min(parse_quantity(spec), device_memory)


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity ("4Gi", "1.5G", "2E", "512e6"), rounded up as the
    kubelet rounds memory; ValueError if Kubernetes would refuse it or it is not positive."""
    # Imported here: the official client takes a second to import, and most configurations
    # say "even" or "none".
    from kubernetes.utils.quantity import parse_quantity as kubernetes_quantity

    value: Decimal = kubernetes_quantity(text)  # type: ignore[no-untyped-call]
    if value <= 0:
        raise ValueError(f"not a positive quantity: {text!r}")
    return math.ceil(value)


PREFIX = "OPENXPU_DEVICE_PLUGIN_"
# The names before OPENXPU_DEVICE_PLUGIN_* (most as NVIDIA's plugin spells them) still work.
SETTINGS: tuple[Setting, ...] = (
    Setting(("flags", "resourceName"), "resource_name", "extended resource", ("RESOURCE_NAME",)),
    Setting(
        ("flags", "deviceListStrategy"),
        "device_list_strategy",
        "comma-separated: envvar, device-specs, cdi",
        ("DEVICE_LIST_STRATEGY",),
    ),
    Setting(
        ("flags", "deviceIDStrategy"),
        "device_id_strategy",
        "uuid or index",
        ("DEVICE_ID_STRATEGY",),
    ),
    Setting(("flags", "pluginDir"), "plugin_dir", "kubelet device-plugin dir", ("PLUGIN_DIR",)),
    Setting(("flags", "xpudSocket"), "xpud_socket", "xpud's API socket", ("XPUD_SOCKET",)),
    Setting(("flags", "cdiSpecDir"), "cdi_spec_dir", "where the CDI spec goes", ("CDI_SPEC_DIR",)),
    Setting(
        ("flags", "podResourcesSocket"),
        "pod_resources_socket",
        "the kubelet's PodResources socket (scope reconciliation)",
    ),
    Setting(
        ("flags", "scopeGracePeriod"),
        "scope_grace_period",
        "seconds a scope may go unheld by any container before it is deleted",
    ),
    Setting(
        ("flags", "nvidiaCompat"),
        "nvidia_compat",
        "mount libnvidia-ml.so.1 and nvidia-smi into XPU containers (true/false)",
    ),
    Setting(("flags", "driverRoot"), "driver_root", "the installed driver's files"),
    Setting(
        ("sharing", "timeSlicing", "replicas"), "replicas", "time-slicing replicas", ("REPLICAS",)
    ),
    Setting(
        ("health", "disableHealthChecks"),
        "disable_healthchecks",
        '"all", or comma-separated fault codes to ignore',
        ("DP_DISABLE_HEALTHCHECKS",),
    ),
)
# The config file and log level: read before the settings, so not settings themselves.
CONFIG_FILE_ENV = (PREFIX + "CONFIG_FILE", "CONFIG_FILE")
LOG_LEVEL_ENV = (PREFIX + "LOG_LEVEL", "LOG_LEVEL")


def first_env(env: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    return next((env[n] for n in names if env.get(n)), None)


@dataclass
class ConfigSource:
    """Everything a configuration is made from, so a reload re-reads the file only."""

    file: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    flags: Mapping[str, str | None] = field(default_factory=dict)

    def load(self) -> Config:
        layers = Layers(PREFIX, SETTINGS, self.file, self.env, self.flags)
        data = layers.read_file()
        if self.file is None:
            data = {"version": "v1"}
        elif "version" not in data:
            raise ConfigError(
                f"{layers.origin}: version: required (this plugin reads `version: v1`)"
            )
        return layers.validate(Config, data, layers.overlay(data))


async def watch_config(source: ConfigSource, interval: float, reload: Callable[[], object]) -> None:
    """Call `reload` whenever the config file's mtime changes; never returns (cancel it).

    The first poll always reloads, so an edit made between the initial load and the start of
    this watch is not missed (reloading an unchanged file is a no-op for the callers).
    """
    if source.file is None:
        return
    last: int | None = -1
    while True:
        await asyncio.sleep(interval)
        if (now := _mtime(source.file)) != last:
            last = now
            reload()


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
