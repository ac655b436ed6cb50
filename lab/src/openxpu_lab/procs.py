"""Host processes of the lab: started detached with a pid file and a log, stopped by pid.

A pid file records the pid and the process start time (field 22 of /proc/<pid>/stat), so a
recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TypedDict


class PidRecord(TypedDict):
    pid: int
    start: str
    argv: list[str]


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its ')' are fixed.
    return stat.rsplit(")", 1)[1].split()[19]


def start(
    name: str,
    argv: Sequence[str | Path],
    pid_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
) -> int:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        log.write(f"\n==== {time.strftime('%F %T')} starting {name}\n".encode())
    args = [str(a) for a in argv]
    full_env = {**os.environ, **(env or {})}
    # The kubelet and kube-proxy run iptables/conntrack/mount from the sbin directories,
    # which a non-login environment may lack.
    path = full_env.get("PATH", "/usr/bin:/bin").split(":")
    full_env["PATH"] = ":".join(
        [*path, *(d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in path)]
    )
    # Started through a shell that backgrounds it and exits at once: the component is never
    # our child, so it outlives this process and leaves no zombie or Popen behind.
    launcher = subprocess.run(
        [
            "/bin/sh",
            "-c",
            'log="$1"; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!',
            "sh",
            str(log_path),
            *args,
        ],
        env=full_env,
        capture_output=True,
        text=True,
        check=True,
        # Own session: not hit by the terminal's ^C.
        start_new_session=True,
    )
    pid = int(launcher.stdout.strip())
    rec: PidRecord = {"pid": pid, "start": _start_time(pid) or "", "argv": args}
    (pid_dir / f"{name}.json").write_text(json.dumps(rec))
    return pid


def read(name: str, pid_dir: Path) -> PidRecord | None:
    f = pid_dir / f"{name}.json"
    try:
        rec: PidRecord = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return rec


def alive(name: str, pid_dir: Path) -> int | None:
    """The pid if the recorded process is still the one we started, else None."""
    rec = read(name, pid_dir)
    if rec is None:
        return None
    st = _start_time(rec["pid"])
    if st is None or st != rec["start"]:
        return None
    # A zombie left by a parent that has not reaped it counts as dead.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{rec['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return None
    return rec["pid"]


def stop(name: str, pid_dir: Path, grace: float = 10.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds. True if something was stopped."""
    pid = alive(name, pid_dir)
    stopped = False
    if pid is not None:
        stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and alive(name, pid_dir) is not None:
            _reap(pid)
            time.sleep(0.1)
        if alive(name, pid_dir) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                _reap(pid)
                if alive(name, pid_dir) is None:
                    break
                time.sleep(0.1)
    (pid_dir / f"{name}.json").unlink(missing_ok=True)
    return stopped


def _reap(pid: int) -> None:
    # When this Python process is the parent (apiserver-only mode), collect the zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(name: str, log_dir: Path, lines: int = 25) -> str:
    f = log_dir / f"{name}.log"
    if not f.exists():
        return f"(no log at {f})"
    with f.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        text = fh.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])
