"""Exporter settings: flags, environment and an optional YAML file, validated in one place."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from openxpu_runtime.paths import default_socket

DEFAULT_KUBELET_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
# dcgm-exporter listens on 9400; users' ServiceMonitors and firewall rules already know it.
DEFAULT_PORT = 9400
RESOURCE_NAMES = ("openxpu.io/xpu", "openxpu.io/xpu.shared")


ENV_PREFIX = "OPENXPU_EXPORTER_"


class ConfigError(ValueError):
    """A setting is invalid; the message names it and says what is allowed."""


def parse_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `:PORT`, as for --listen and OPENXPU_EXPORTER_LISTEN."""
    host, _, port = value.rpartition(":")
    try:
        return host or "0.0.0.0", int(port)
    except ValueError:
        raise ConfigError(f"listen: expected HOST:PORT or :PORT, got {value!r}") from None


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    xpud_socket: Path = field(default_factory=default_socket)
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
    hostname: str = field(
        default_factory=lambda: os.environ.get("NODE_NAME") or socket.gethostname()
    )
    # Metric names (native or DCGM) left out of /metrics.
    disabled_metrics: frozenset[str] = frozenset()
    resource_names: tuple[str, ...] = RESOURCE_NAMES

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        if self.refresh_interval < 0 or self.refresh_interval > 3600:
            raise ConfigError(f"refresh_interval must be 0..3600 s, got {self.refresh_interval}")
        if not 0.1 <= self.attribution_interval <= 3600:
            raise ConfigError(
                f"attribution_interval must be 0.1..3600 s, got {self.attribution_interval}"
            )
        if not (self.native or self.dcgm_compat):
            raise ConfigError("at least one of native and dcgm_compat must be on")
        if not self.hostname:
            raise ConfigError("hostname must not be empty")


_PATHS = {"xpud_socket", "kubelet_socket"}
_FLOATS = {"refresh_interval", "attribution_interval"}
_BOOLS = {"pod_attribution", "native", "dcgm_compat"}


def _coerce(key: str, value: Any) -> Any:
    try:
        if key in _PATHS:
            return Path(str(value))
        if key in _FLOATS:
            return float(value)
        if key == "port":
            return int(value)
        if key in _BOOLS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {value!r}")
        if key == "disabled_metrics":
            items = value.split(",") if isinstance(value, str) else list(value)
            return frozenset(str(i).strip() for i in items if str(i).strip())
        if key == "resource_names":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}") from None


def load(file: Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults < YAML file < OPENXPU_EXPORTER_* environment < explicit overrides (flags)."""
    names = {f.name for f in fields(Config)}
    values: dict[str, Any] = {}
    if file is not None:
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {file}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {file} must hold a mapping")
        unknown = sorted(set(map(str, data)) - names)
        if unknown:
            raise ConfigError(f"unknown setting(s) in {file}: {', '.join(unknown)}")
        values.update(data)
    # Not host and port: for a Service named openxpu-exporter Kubernetes injects
    # OPENXPU_EXPORTER_PORT=tcp://… into every pod. The address comes from ..._LISTEN.
    for name in names - {"host", "port"}:
        env = os.environ.get(f"{ENV_PREFIX}{name.upper()}")
        if env is not None:
            values[name] = env
    listen = os.environ.get(f"{ENV_PREFIX}LISTEN")
    if listen is not None:
        values["host"], values["port"] = parse_listen(listen)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return Config(**{k: _coerce(k, v) for k, v in values.items()})
