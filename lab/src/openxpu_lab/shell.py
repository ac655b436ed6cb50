"""Running host commands with errors that say what failed."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


class LabError(RuntimeError):
    """A failure the CLI reports as one clear message (no traceback)."""


def run(
    argv: Sequence[str | Path],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    input_bytes: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            capture_output=capture,
            text=True,
            timeout=timeout,
            input=input_bytes.decode() if input_bytes is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise LabError(f"command not found: {args[0]}") from exc
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"timed out after {timeout}s: {' '.join(args)}") from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-15:]
        raise LabError(f"command failed ({proc.returncode}): {' '.join(args)}\n" + "\n".join(tail))
    return proc


def ok(argv: Sequence[str | Path], timeout: float = 30) -> bool:
    """True when the command exits 0; used for probes that may fail harmlessly."""
    try:
        return run(argv, check=False, timeout=timeout).returncode == 0
    except LabError:
        return False
