"""`xpu-burn`: sustained load at a target utilization for a duration, on every visible device."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from openxpu_runtime.errors import XpuError
from openxpu_runtime.xpu import XpuSession, parse_size

# Work is queued one period ahead; a shorter period tracks the target more closely.
PERIOD_SECONDS = 0.2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xpu-burn", description=__doc__)
    p.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    p.add_argument("--utilization", type=float, default=1.0, help="target, 0 < U <= 1")
    p.add_argument("--memory", default="0", help="memory to hold per device, e.g. 4Gi")
    p.add_argument("--kind", choices=["vector", "matrix"], default="matrix")
    args = p.parse_args(argv)
    if not 0 < args.utilization <= 1 or args.duration <= 0:
        p.error("--utilization must be in (0, 1] and --duration positive")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        memory = parse_size(args.memory)
        with XpuSession(name="xpu-burn") as xpu:
            count = xpu.device_count()
            if count == 0:
                print("xpu-burn: no XPU visible (XPU_VISIBLE_DEVICES)", file=sys.stderr)
                return 2
            if memory:
                for device in range(count):
                    xpu.malloc(memory, device)
            print(f"xpu-burn: {count} device(s) at {args.utilization:.0%} for {args.duration}s")
            deadline = time.monotonic() + args.duration
            queued_until = [0.0] * count
            while not stop.is_set() and (now := time.monotonic()) < deadline:
                for device in range(count):
                    # Throttled or shared devices run slower: never queue more than a period.
                    if queued_until[device] - now > PERIOD_SECONDS:
                        continue
                    peak = xpu.get_device_properties(device).peak_ops_per_second
                    ops = peak * PERIOD_SECONDS * args.utilization
                    queued_until[device] = (
                        now + xpu.launch(ops, device, args.kind).estimated_seconds
                    )
                stop.wait(PERIOD_SECONDS)
            xpu.synchronize()
    except XpuError as exc:
        print(f"xpu-burn: {exc}", file=sys.stderr)
        return 3
    print("xpu-burn: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
