"""One settings mechanism for every OpenXPU component.

A setting comes from, lowest first: the model's default, a YAML file, an environment variable,
a command-line flag. Each component names its variables `<PREFIX><FLAG>` (the prefix is
`OPENXPU_DEVICE_PLUGIN_`, `OPENXPU_EXPORTER_`, ...) and may accept older or NVIDIA-style names
as aliases, which the prefixed name overrides. One pydantic model validates the result; a bad
value is reported with the setting's name as the file spells it and where the value came from:

    invalid configuration: sharing.timeSlicing.replicas: Input should be greater than or
    equal to 1 (from env OPENXPU_DEVICE_PLUGIN_REPLICAS)
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
# Where each overridden value came from, by its path in the file: "env X", "flag --x".
Provenance = dict[tuple[str, ...], str]


class SettingsError(ValueError):
    """Settings that cannot be used; the message names each bad one and its source."""


@dataclass(frozen=True)
class Setting:
    """One setting that env and flags may override, and where it lives in the file."""

    path: tuple[str, ...]
    flag: str  # the flag without dashes, as argparse's dest: `device_id_strategy`
    help: str = ""
    # Other environment names accepted, weaker than the prefixed one.
    aliases: tuple[str, ...] = ()

    @property
    def option(self) -> str:
        return "--" + self.flag.replace("_", "-")

    def env_names(self, prefix: str) -> tuple[str, ...]:
        return (prefix + self.flag.upper(), *self.aliases)


@dataclass(frozen=True)
class Layers:
    """What settings are made from, kept so that a reload re-reads the file only."""

    prefix: str
    settings: tuple[Setting, ...]
    file: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # By flag name; None means "not given on the command line".
    flags: Mapping[str, object] = field(default_factory=dict)

    def read_file(self) -> dict[str, Any]:
        """The file's mapping ({} without a file); SettingsError if unreadable or not one."""
        if self.file is None:
            return {}
        origin = f"config file {self.file}"
        try:
            data = yaml.safe_load(self.file.read_text())
        except OSError as exc:
            raise SettingsError(f"{origin}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"{origin}: not valid YAML: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SettingsError(f"{origin}: must be a mapping of settings")
        return data

    def overlay(self, data: dict[str, Any]) -> Provenance:
        """Put env and flag values over `data` (in place); returns where each came from."""
        provenance: Provenance = {}
        for s in self.settings:
            flag = self.flags.get(s.flag)
            if flag is not None:
                put(data, s.path, flag)
                provenance[s.path] = f"flag {s.option}"
                continue
            for name in s.env_names(self.prefix):
                if self.env.get(name):
                    put(data, s.path, self.env[name])
                    provenance[s.path] = f"env {name}"
                    break
        return provenance

    @property
    def origin(self) -> str:
        return f"config file {self.file}" if self.file else "defaults"

    def validate(self, model: type[M], data: dict[str, Any], provenance: Provenance) -> M:
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise SettingsError(describe(exc, self.origin, provenance)) from None

    def load(self, model: type[M]) -> M:
        data = self.read_file()
        return self.validate(model, data, self.overlay(data))


def put(data: dict[str, Any], path: tuple[str, ...], value: object) -> None:
    node = data
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def describe(exc: ValidationError, origin: str, provenance: Provenance) -> str:
    """One line naming every bad setting, as the file spells it, and its source."""
    problems = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        # The longest overridden path that holds the error (a list item under a setting).
        where = next(
            (provenance[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in provenance),
            origin,
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        problems.append(f"{'.'.join(loc) + ': ' if loc else ''}{msg} (from {where})")
    return "invalid configuration: " + "; ".join(problems)


def add_arguments(
    parser: argparse.ArgumentParser, prefix: str, settings: Iterable[Setting]
) -> None:
    """One string flag per setting, defaulting to None (= not given), with its sources."""
    for s in settings:
        names = " or ".join(s.env_names(prefix))
        parser.add_argument(
            s.option,
            dest=s.flag,
            default=None,
            help=f"{s.help} (env {names}; file {'.'.join(s.path)})",
        )
