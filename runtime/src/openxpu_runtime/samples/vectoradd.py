"""`xpu-vectoradd`: the validation workload. Allocates on the device, adds two vectors,
checks the result and exits non-zero on any mismatch — like CUDA's vectorAdd sample.

Exit codes: 0 passed, 1 wrong result, 2 bad arguments or no device visible, 3 xpud refused
or unreachable, 130 interrupted (Ctrl-C)."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import numpy.typing as npt

from openxpu_runtime.errors import XpuError
from openxpu_runtime.xpu import XpuSession

Vector = npt.NDArray[np.float32]
TOLERANCE = 1e-5
EXIT_INTERRUPTED = 130


def vector_add(a: Vector, b: Vector, chunk: int) -> Vector:
    """The kernel: element-wise add, block by block as a device would schedule it."""
    c = np.empty_like(a)
    for start in range(0, len(a), chunk):
        np.add(a[start : start + chunk], b[start : start + chunk], out=c[start : start + chunk])
    return c


def mismatches(a: Vector, b: Vector, c: Vector) -> int:
    """Elements where the device result differs from a float64 host reference."""
    reference = a.astype(np.float64) + b.astype(np.float64)
    return int(np.count_nonzero(np.abs(reference - c) > TOLERANCE))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xpu-vectoradd", description=__doc__)
    p.add_argument("--elements", type=int, default=1 << 20)
    p.add_argument("--device", type=int, default=0, help="ordinal among the visible devices")
    p.add_argument(
        "--iterations",
        type=int,
        default=2000,
        help="kernel repetitions sent to the device (sets how long it is busy)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.elements <= 0 or args.iterations <= 0:
        p.error("--elements and --iterations must be positive")
    try:
        with XpuSession(name="xpu-vectoradd") as xpu:
            if xpu.device_count() == 0:
                print("[xpu-vectoradd] no XPU visible (XPU_VISIBLE_DEVICES)", file=sys.stderr)
                return 2
            props = xpu.get_device_properties(args.device)
            print(f"[xpu-vectoradd] device {args.device}: {props.product} ({props.uuid})")
            nbytes = args.elements * np.dtype(np.float32).itemsize
            buffers = [xpu.malloc(nbytes, args.device) for _ in range(3)]
            rng = np.random.default_rng(args.seed)
            a = rng.random(args.elements, dtype=np.float32)
            b = rng.random(args.elements, dtype=np.float32)
            xpu.launch(float(args.elements) * args.iterations, args.device)
            c = vector_add(a, b, chunk=props.compute_units * 1024)
            xpu.synchronize(args.device)
            for buf in buffers:
                xpu.free(buf)
    except XpuError as exc:
        print(f"[xpu-vectoradd] {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:  # the session closed on the way out: its memory is back
        print("[xpu-vectoradd] interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    bad = mismatches(a, b, c)
    if bad:
        print(f"[xpu-vectoradd] Test FAILED: {bad} of {args.elements} elements mismatch")
        return 1
    print(f"[xpu-vectoradd] {args.elements} elements checked. Test PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
