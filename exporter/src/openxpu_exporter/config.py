"""Exporter settings: flags, OPENXPU_EXPORTER_* environment and an optional YAML file, through
the settings mechanism every OpenXPU component shares (openxpu_runtime.settings)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from openxpu_runtime.paths import default_socket
from openxpu_runtime.settings import Layers, Setting, SettingsError

DEFAULT_KUBELET_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
# dcgm-exporter listens on 9400; users' ServiceMonitors and firewall rules already know it.
DEFAULT_PORT = 9400
RESOURCE_NAMES = ("openxpu.io/xpu", "openxpu.io/xpu.shared")


ENV_PREFIX = "OPENXPU_EXPORTER_"


# A setting is invalid; the message names it, says what is allowed and where it came from.
ConfigError = SettingsError


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `:PORT`, as for --listen and OPENXPU_EXPORTER_LISTEN."""
    host, _, port = value.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError:
        raise ConfigError(f"listen: expected HOST:PORT or :PORT, got {value!r}") from None


# Seconds, inclusive.
_INTERVALS = {"refresh_interval": (0.0, 3600.0), "attribution_interval": (0.1, 3600.0)}


def _items(value: object) -> object:
    """A comma-separated string (env, file) or any iterable (flags, code) as stripped items."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, Iterable):
        return [str(i).strip() for i in items if str(i).strip()]
    return value


class Config(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    xpud_socket: Path = Field(default_factory=default_socket)
    kubelet_socket: Path = DEFAULT_KUBELET_SOCKET
    # Pod labels from the kubelet's PodResources API; off outside Kubernetes.
    pod_attribution: bool = True
    # Native openxpu_* names and/or dcgm-exporter's DCGM_FI_* names.
    native: bool = True
    dcgm_compat: bool = False
    # 0: read xpud on every scrape. >0: read it in the background this often and serve the
    # latest snapshot (see docs/exporter.md for the measurements behind the default).
    refresh_interval: float = 1.0
    attribution_interval: float = 5.0
    hostname: str = Field(
        default_factory=lambda: os.environ.get("NODE_NAME") or socket.gethostname()
    )
    # Metric names (native or DCGM) left out of /metrics.
    disabled_metrics: frozenset[str] = frozenset()
    resource_names: tuple[str, ...] = RESOURCE_NAMES

    @field_validator("port")
    @classmethod
    def _port(cls, value: int) -> int:
        if not 0 < value < 65536:
            raise ValueError(f"must be 1..65535, got {value}")
        return value

    @field_validator("refresh_interval", "attribution_interval")
    @classmethod
    def _interval(cls, value: float, info: ValidationInfo) -> float:
        low, high = _INTERVALS[info.field_name or ""]
        if not low <= value <= high:
            raise ValueError(f"must be {low:g}..{high:g} s, got {value}")
        return value

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("disabled_metrics", "resource_names", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _items(value)

    @model_validator(mode="after")
    def _some_names(self) -> Config:
        if not (self.native or self.dcgm_compat):
            raise ValueError("at least one of native and dcgm_compat must be on")
        return self


# Every field but host and port: for a Service named openxpu-exporter Kubernetes injects
# OPENXPU_EXPORTER_PORT=tcp://… into every pod. The address comes from ..._LISTEN.
SETTINGS = tuple(
    Setting((name,), name) for name in Config.model_fields if name not in ("host", "port")
)


def load(file: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < YAML file < OPENXPU_EXPORTER_* environment < explicit overrides (flags)."""
    flags = dict(overrides or {})
    address = {k: flags.pop(k) for k in ("host", "port") if flags.get(k) is not None}
    layers = Layers(ENV_PREFIX, SETTINGS, file, dict(os.environ), flags)
    data = layers.read_file()
    provenance = layers.overlay(data)
    listen = os.environ.get(f"{ENV_PREFIX}LISTEN")
    if address:
        data.update(address)
        provenance.update({(k,): "flag --listen" for k in address})
    elif listen is not None:
        data["host"], data["port"] = parse_listen(listen)
        provenance.update({(k,): f"env {ENV_PREFIX}LISTEN" for k in ("host", "port")})
    return layers.validate(Config, data, provenance)
