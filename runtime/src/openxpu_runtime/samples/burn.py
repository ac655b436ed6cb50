"""`xpu-burn`: sustained load at a target utilization for a duration, on every visible device.

A device that fails on the way (Unhealthy, Lost) is named on stderr and left out; the load
goes on on the others. Exit codes: 0 done, 1 done but a device was lost, 2 bad arguments or
no device visible, 3 no device left or xpud refused, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import threading
import time
import types
from dataclasses import dataclass

from openxpu_runtime.errors import DeviceUnavailable, XpuError
from openxpu_runtime.xpu import XpuSession, parse_size

# How often work is handed out, and how far ahead a device's queue may run: enough to keep
# it busy between rounds, little enough that a throttled or shared device cannot pile up.
PERIOD_SECONDS = 0.2
MAX_AHEAD_SECONDS = 2 * PERIOD_SECONDS
EXIT_LOST_DEVICE = 1
EXIT_INTERRUPTED = 130


@dataclass
class Pace:
    """One device's load: busy time is owed for every second that passes, so the target holds
    however long a round of launches over all devices takes."""

    ops_per_second: float  # measured from xpud's estimates, so throttling is accounted for
    paid_until: float  # the load is delivered up to this instant
    busy_until: float = 0.0  # xpud's estimate of when the queued work runs out


class Burn:
    def __init__(self, xpu: XpuSession, utilization: float, kind: str) -> None:
        self.xpu = xpu
        self.utilization = utilization
        self.kind = kind
        self.active = {
            i: Pace(xpu.get_device_properties(i).peak_ops_per_second, paid_until=0.0)
            for i in range(xpu.device_count())
        }
        self.lost: list[int] = []

    def start(self, now: float) -> None:
        for pace in self.active.values():
            pace.paid_until = now - PERIOD_SECONDS  # the first round queues one period

    def lose(self, device: int, exc: XpuError) -> None:
        self.active.pop(device, None)
        self.lost.append(device)
        uuid = self.xpu.get_device_properties(device).uuid
        left = len(self.active)
        print(
            f"xpu-burn: lost XPU {device} ({uuid}): {exc}; going on with {left} device(s)",
            file=sys.stderr,
            flush=True,
        )

    def hold_memory(self, size: int) -> None:
        for device in list(self.active):
            try:
                self.xpu.malloc(size, device)
            except DeviceUnavailable as exc:
                self.lose(device, exc)

    def round(self, now: float) -> None:
        for device, pace in list(self.active.items()):
            if pace.busy_until - now > MAX_AHEAD_SECONDS:
                pace.paid_until = now  # the device is slower than measured: owe nothing more
                continue
            busy = self.utilization * (now - pace.paid_until)
            try:
                result = self.xpu.launch(busy * pace.ops_per_second, device, self.kind)
            except DeviceUnavailable as exc:
                self.lose(device, exc)
                continue
            pace.paid_until = now
            pace.busy_until = now + result.estimated_seconds
            if result.estimated_seconds > 0:
                pace.ops_per_second = result.queued_ops / result.estimated_seconds

    def drain_seconds(self, now: float) -> float:
        """How long the queued work still keeps the devices busy."""
        return max((p.busy_until - now for p in self.active.values()), default=0.0)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="xpu-burn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--utilization", type=float, default=1.0, help="target, 0 < U <= 1")
    p.add_argument("--memory", default="0", help="memory to hold per device, e.g. 4Gi")
    p.add_argument("--kind", choices=["vector", "matrix"], default="matrix")
    args = p.parse_args(argv)
    if not 0 < args.utilization <= 1:
        p.error("--utilization must be in (0, 1]")
    if not (math.isfinite(args.duration) and args.duration > 0):
        p.error("--duration must be a finite number of seconds > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    interrupted = threading.Event()

    def on_interrupt(signum: int, frame: types.FrameType | None) -> None:
        interrupted.set()
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second ^C: at once

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, on_interrupt)
    try:
        memory = parse_size(args.memory)
        with XpuSession(name="xpu-burn") as xpu:
            if xpu.device_count() == 0:
                print("xpu-burn: no XPU visible (XPU_VISIBLE_DEVICES)", file=sys.stderr)
                return 2
            burn = Burn(xpu, args.utilization, args.kind)
            if memory:
                burn.hold_memory(memory)
            print(
                f"xpu-burn: {len(burn.active)} device(s) at {args.utilization:.0%} "
                f"for {args.duration:g}s",
                flush=True,
            )
            begin = time.monotonic()
            deadline = begin + args.duration
            burn.start(begin)
            while burn.active and not stop.is_set() and (now := time.monotonic()) < deadline:
                burn.round(now)
                stop.wait(PERIOD_SECONDS)
            if not interrupted.is_set():
                # Let the queued work finish, as a synchronize would, without waiting on a
                # device that turned Unhealthy after its last launch (its queue never drains).
                stop.wait(burn.drain_seconds(time.monotonic()))
    except KeyboardInterrupt:
        interrupted.set()
    except XpuError as exc:
        print(f"xpu-burn: {exc}", file=sys.stderr)
        return 3
    if interrupted.is_set():
        print("xpu-burn: interrupted; load stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not burn.active:
        print("xpu-burn: no device left to load", file=sys.stderr)
        return 3
    if burn.lost:
        print(f"xpu-burn: done; lost XPU {', '.join(map(str, burn.lost))}")
        return EXIT_LOST_DEVICE
    print("xpu-burn: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
