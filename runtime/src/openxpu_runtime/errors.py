"""Errors shared by the daemon and its clients: each has a stable code and an HTTP status."""

from __future__ import annotations


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
    )
}
