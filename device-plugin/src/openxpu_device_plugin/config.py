"""The plugin's configuration: a versioned file (`version: v1`), overridden by environment
variables, overridden by command-line flags — the same precedence as NVIDIA's plugin.

A bad value is rejected with a message naming the field (as written in the file) and where
the value came from; the caller keeps the last good configuration in force.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_RESOURCE = "openxpu.io/xpu"
DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_XPUD_SOCKET = "/run/openxpu/xpud.sock"
DEFAULT_CDI_SPEC_DIR = "/var/run/cdi"

# An extended resource name: a DNS subdomain prefix, then a name the kubelet accepts.
_RESOURCE_RE = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_QUANTITY_RE = re.compile(r"^\s*(\d+)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?\s*$")
_UNITS = {
    None: 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the field."""


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
        if text in ("even", "none") or _QUANTITY_RE.match(text):
            return text
        raise ValueError('must be "even", "none" or a quantity such as 4Gi or 512Mi')


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


class Config(_Strict):
    version: Literal["v1"]
    flags: Flags = Field(default_factory=Flags)
    sharing: Sharing = Field(default_factory=Sharing)

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
    m = _QUANTITY_RE.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class Setting:
    """One overridable setting: where it lives in the file, its flag and its env var."""

    path: tuple[str, ...]
    flag: str
    env: str
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(("flags", "resourceName"), "resource_name", "RESOURCE_NAME", "extended resource"),
    Setting(
        ("flags", "deviceListStrategy"),
        "device_list_strategy",
        "DEVICE_LIST_STRATEGY",
        "comma-separated: envvar, device-specs, cdi",
    ),
    Setting(
        ("flags", "deviceIDStrategy"), "device_id_strategy", "DEVICE_ID_STRATEGY", "uuid or index"
    ),
    Setting(("flags", "pluginDir"), "plugin_dir", "PLUGIN_DIR", "kubelet device-plugin dir"),
    Setting(("flags", "xpudSocket"), "xpud_socket", "XPUD_SOCKET", "xpud's API socket"),
    Setting(("flags", "cdiSpecDir"), "cdi_spec_dir", "CDI_SPEC_DIR", "where the CDI spec goes"),
    Setting(
        ("sharing", "timeSlicing", "replicas"), "replicas", "REPLICAS", "time-slicing replicas"
    ),
)


@dataclass
class ConfigSource:
    """Everything a configuration is made from, so a reload re-reads the file only."""

    file: Path | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    flags: Mapping[str, str | None] = field(default_factory=dict)

    def load(self) -> Config:
        raw, origin = self._file_data()
        provenance: dict[tuple[str, ...], str] = {}
        for s in SETTINGS:
            value: str | None = None
            if self.flags.get(s.flag) is not None:
                value, provenance[s.path] = self.flags[s.flag], f"flag --{s.flag.replace('_', '-')}"
            elif self.env.get(s.env):
                value, provenance[s.path] = self.env[s.env], f"env {s.env}"
            if value is not None:
                _set(raw, s.path, value)
        try:
            return Config.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, origin, provenance)) from None

    def _file_data(self) -> tuple[dict[str, Any], str]:
        if self.file is None:
            return {"version": "v1"}, "defaults"
        origin = f"config file {self.file}"
        try:
            data = yaml.safe_load(self.file.read_text())
        except OSError as exc:
            raise ConfigError(f"{origin}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{origin}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: must be a mapping with `version: v1`")
        if "version" not in data:
            raise ConfigError(f"{origin}: version: required (this plugin reads `version: v1`)")
        return data, origin


def _set(data: dict[str, Any], path: tuple[str, ...], value: str) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _describe(exc: ValidationError, origin: str, provenance: dict[tuple[str, ...], str]) -> str:
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        where = provenance.get(loc[:3]) or provenance.get(loc[:2]) or origin
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error" and loc == ("version",):
            msg = f"unsupported version {err.get('input')!r}; this plugin reads v1"
        problems.append(f"{'.'.join(loc) or '(top level)'}: {msg} (from {where})")
    return "invalid configuration: " + "; ".join(problems)


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
