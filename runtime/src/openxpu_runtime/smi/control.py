"""The commands that change xpud or follow it: these need the full client, imported on use."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from openxpu_runtime import api
from openxpu_runtime.client import XpudClient, _request
from openxpu_runtime.errors import Unreachable

# Backoff between reconnection attempts of the event stream, first and largest.
RETRY_FIRST_SECONDS = 0.1
RETRY_MAX_SECONDS = 2.0


def fault_request(
    device: str, code: int, sticky: bool | None, recover_after: float | None, message: str
) -> api.FaultRequest:
    """The request, checked before any device is looked up: a bad one is refused at once."""
    return _request(
        api.FaultRequest,
        device=device,
        code=code,
        sticky=sticky,
        recover_after_seconds=recover_after,
        message=message,
    )


def inject_fault(socket: Path, req: api.FaultRequest) -> str:
    with XpudClient(socket) as client:
        done = client.inject_fault(req)
    return (
        f"XPU {req.device}: injected {done.code} {done.name} ({done.severity}); "
        f"health is now {done.health}"
    )


def clear_fault(socket: Path, device: str, code: int | None) -> str:
    with XpudClient(socket) as client:
        cleared = client.clear_faults(device, code)
    return f"XPU {device}: cleared {cleared.cleared or 'nothing'}; health is now {cleared.health}"


def follow_events(
    socket: Path, reconnect_timeout: float, uuids: frozenset[str] | None = None
) -> None:
    """Print the event stream as JSON lines. When it ends (xpud stopped or restarted), say so
    and reconnect, backing off, for up to `reconnect_timeout` seconds; each new stream opens
    with a snapshot of every device, so a reader resynchronises. Unreachable when xpud is not
    there to begin with or does not come back in time. `uuids`: only these devices' events."""
    connected = False
    deadline: float | None = None
    delay = RETRY_FIRST_SECONDS
    with XpudClient(socket) as client:
        while True:
            try:
                for event in client.events():
                    connected, deadline, delay = True, None, RETRY_FIRST_SECONDS
                    if uuids is None or event.device_uuid in uuids:
                        print(event.model_dump_json(), flush=True)
                why = "xpud closed the event stream"
            except Unreachable as exc:
                if not connected:
                    raise
                why = str(exc)
            now = time.monotonic()
            if deadline is None:
                deadline = now + reconnect_timeout
                print(
                    f"xpu-smi: {why}; reconnecting for up to {reconnect_timeout:g}s",
                    file=sys.stderr,
                    flush=True,
                )
            if now >= deadline:
                raise Unreachable(
                    f"the event stream from {socket} ended and xpud did not come back "
                    f"within {reconnect_timeout:g}s"
                )
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, RETRY_MAX_SECONDS)
