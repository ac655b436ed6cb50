"""Errors shared by the daemon and its clients: each has a stable code and an HTTP status."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

# xpud's exit status when its start-up self-test fails. A driver build that fails its
# self-test fails it again on every restart, so whoever runs xpud (the operator's driver
# upgrade) may give up at the first such exit instead of waiting out a crash loop.
SELF_TEST_FAILED_EXIT = 3


class XpuError(Exception):
    code = "xpu_error"
    status = 400

    def __init__(self, message: str, device_uuid: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The device concerned, by UUID: a workload renders it as its own index, which
        # differs from the host's index under XPU_VISIBLE_DEVICES.
        self.device_uuid = device_uuid


class InvalidArgument(XpuError):
    code = "invalid_argument"
    status = 400


class NotFound(XpuError):
    code = "not_found"
    status = 404


class OutOfMemory(XpuError):
    code = "out_of_memory"
    status = 409


class DeviceUnavailable(XpuError):
    code = "device_unavailable"
    status = 409


class FailedPrecondition(XpuError):
    code = "failed_precondition"
    status = 409


class QuotaExceeded(XpuError):
    """A client holds as much as xpud lets one client hold (contexts, allocations, work)."""

    code = "quota_exceeded"
    status = 409


class PermissionDenied(XpuError):
    """The caller's socket does not grant this: an admin route reached through a scope."""

    code = "permission_denied"
    status = 403


class BadResponse(XpuError):
    """xpud answered something this client cannot read (a daemon of another version)."""

    code = "bad_response"
    status = 502


class Unreachable(XpuError):
    """The client could not talk to xpud at all."""

    code = "unreachable"
    status = 503


BY_CODE: dict[str, type[XpuError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        OutOfMemory,
        DeviceUnavailable,
        FailedPrecondition,
        QuotaExceeded,
        PermissionDenied,
    )
}


def describe_problems(problems: Iterable[Mapping[str, Any]]) -> str:
    """pydantic's validation errors as one line: `body.pid: Input should be ...; ...`."""
    return "; ".join(
        f"{'.'.join(str(part) for part in p.get('loc', ()))}: {p.get('msg')}" for p in problems
    )


class CommandLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other error our
    commands report (argparse's own prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")
