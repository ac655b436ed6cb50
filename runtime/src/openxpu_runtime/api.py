"""The xpud wire contract (API v1): one definition used by the daemon, its clients and docs."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = "v1"

# A device is named by its index ("0") or its UUID ("XPU-…").
DeviceRef = Annotated[str, Field(min_length=1, max_length=64, examples=["0"])]


class Response(BaseModel):
    """What xpud answers. Clients ignore fields they do not know: a newer xpud may add some,
    and driver and node agents are upgraded separately."""

    model_config = ConfigDict(extra="ignore")


class Request(BaseModel):
    """What clients send: no unknown fields and no coercion (JSON `false` is not a pid)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ErrorBody(Response):
    code: str
    message: str
    device_uuid: str | None = None  # the device an error is about, if one


class ErrorResponse(Response):
    error: ErrorBody


class VersionInfo(Response):
    api: str
    runtime_version: str
    driver_version: str
    node: str
    clock: str = Field(examples=["system", "manual"])
    # The allocation this socket serves; None on the admin socket.
    scope: str | None = None


class DeviceInfo(Response):
    index: int
    uuid: str
    product: str
    family: str
    memory_total_bytes: int
    compute_units: int
    max_clock_mhz: int
    peak_ops_per_second: float
    tdp_watts: float
    link_group: int
    numa_node: int
    device_path: str
    health: str


class Inventory(Response):
    node: str
    profile: str
    driver_version: str
    devices: list[DeviceInfo]


class ProcessMemory(Response):
    context_id: str
    pid: int
    name: str
    memory_used_bytes: int


class ActiveFault(Response):
    code: int
    name: str
    severity: str
    sticky: bool
    injected_at: float
    recover_at: float | None
    message: str


class DeviceTelemetry(Response):
    index: int
    uuid: str
    health: str
    health_reason: str
    utilization_ratio: float
    matrix_utilization_ratio: float
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    temperature_celsius: float | None  # None: a lost device cannot be read
    power_watts: float
    power_limit_watts: float
    energy_joules: float
    clock_mhz: float
    max_clock_mhz: int
    memory_clock_mhz: int
    throttle_reasons: list[str]
    ecc_corrected_total: int
    ecc_uncorrected_total: int
    errors_total: dict[str, int]
    last_error_code: int
    active_faults: list[ActiveFault]
    pending_ops: float
    processes: list[ProcessMemory]


class Telemetry(Response):
    node: str
    timestamp: float
    driver_version: str
    devices: list[DeviceTelemetry]


class ContextRequest(Request):
    pid: int = Field(ge=0)
    name: str = Field(min_length=1, max_length=128)
    devices: list[DeviceRef] = Field(min_length=1, max_length=1024)
    # Per visible device: a memory cap in bytes (shared replicas).
    memory_limits: dict[DeviceRef, Annotated[int, Field(gt=0)]] = Field(default_factory=dict)
    # A context not heard from within its lease is reaped, as if its process had exited.
    lease_seconds: float | None = Field(default=None, gt=0, le=86_400)


class ContextDevice(Response):
    index: int
    uuid: str
    memory_limit_bytes: int | None
    memory_used_bytes: int


class Context(Response):
    id: str
    pid: int
    name: str
    created_at: float
    lease_seconds: float | None
    devices: list[ContextDevice]
    scope: str | None = None  # the allocation it was opened through


class AllocationRequest(Request):
    device: DeviceRef
    size: int = Field(gt=0, le=1 << 50)


class Allocation(Response):
    handle: str
    device_uuid: str
    size: int


class LaunchRequest(Request):
    device: DeviceRef
    ops: float = Field(gt=0, le=1e18)
    kind: Literal["vector", "matrix"] = "vector"


class LaunchResult(Response):
    device_uuid: str
    queued_ops: float
    estimated_seconds: float


class SyncRequest(Request):
    device: DeviceRef | None = None


class SyncResult(Response):
    pending_ops: float
    estimated_seconds: float


class FaultRequest(Request):
    device: DeviceRef
    code: int
    sticky: bool | None = None
    recover_after_seconds: float | None = Field(default=None, gt=0, le=86_400)
    message: str = Field(default="", max_length=256)


class FaultInjected(Response):
    device_uuid: str
    code: int
    name: str
    severity: str
    health: str


class FaultsCleared(Response):
    device_uuid: str
    cleared: list[int]
    health: str


# A device as the device plugin allocated it: its UUID, host index, or a shared replica's ID
# `<uuid>::<n>`.
DeviceID = Annotated[str, Field(min_length=1, max_length=96, examples=["0"])]
LabelKey = Annotated[str, Field(min_length=1, max_length=128)]
LabelValue = Annotated[str, Field(max_length=256)]


class ScopeDeviceRequest(Request):
    id: DeviceID
    # Shared replicas: what this replica may hold; replicas of one device add up.
    memory_limit_bytes: int | None = Field(default=None, gt=0, le=1 << 50)


class ScopeRequest(Request):
    devices: list[ScopeDeviceRequest] = Field(min_length=1, max_length=1024)
    # Free-form, for whoever reconciles scopes (pod, container, resource name).
    labels: dict[LabelKey, LabelValue] = Field(default_factory=dict, max_length=16)


class ScopeDevice(Response):
    index: int  # as the scope's clients see it: 0..n-1
    host_index: int
    uuid: str
    memory_limit_bytes: int | None


class Scope(Response):
    id: str
    created_at: float
    socket: str | None  # None: xpud serves no socket for it (in-process tests)
    device_ids: list[str]
    devices: list[ScopeDevice]
    labels: dict[str, str]
    contexts: int


class ClockAdvance(Request):
    # Bounded: every simulated second costs ten model sub-steps per device.
    seconds: float = Field(ge=0, le=3_600)


class ClockReading(Response):
    now: float


class Event(Response):
    """One line of the event stream. `snapshot` opens every stream with each device's health."""

    seq: int
    time: float
    # Open: a newer xpud may send types this client does not know; readers skip those.
    type: str = Field(examples=["snapshot", "health", "fault"])
    device_index: int
    device_uuid: str
    health: str
    previous_health: str | None = None
    code: int | None = None
    reason: str = ""
