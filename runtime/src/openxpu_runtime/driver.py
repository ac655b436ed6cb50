"""`xpu-driver`: install, upgrade and uninstall the emulated XPU driver on a host root.

Install puts the runtime under ROOT/opt/openxpu/driver/<version> (with a `current` link
and xpu-smi on ROOT/usr/local/bin), creates the /dev/xpuN nodes, starts `xpud`, and records
the version. Installing another version is an in-place upgrade: xpud stops (saving its
state), the files are swapped, and the new xpud resumes from the same device state.
The driver DaemonSet runs `xpu-driver install --foreground`, so xpud is its main process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TypedDict

import openxpu_runtime
from openxpu_runtime.client import wait_until_answering
from openxpu_runtime.daemon import devnodes
from openxpu_runtime.errors import Unreachable
from openxpu_runtime.paths import HostPaths
from openxpu_runtime.profiles import DEFAULT_PROFILE, ProfileError, load_profile

XPUD_MODULE = "openxpu_runtime.daemon.main"
STOP_TIMEOUT_SECONDS = 15.0
START_TIMEOUT_SECONDS = 20.0
SMI_SHIM = """#!/bin/sh
# Installed by xpu-driver {version}.
PYTHONPATH="{lib}${{PYTHONPATH:+:$PYTHONPATH}}" exec {python} -m openxpu_runtime.smi "$@"
"""


class DriverError(Exception):
    pass


class Installed(TypedDict):
    version: str
    installed_at: float
    previous: str | None
    profile: str
    node: str


class Driver:
    def __init__(self, root: Path) -> None:
        self.paths = HostPaths(root)

    @property
    def record(self) -> Path:
        return self.paths.state_dir / "driver.json"

    @property
    def pidfile(self) -> Path:
        return self.paths.run_dir / "xpud.pid"

    @property
    def logfile(self) -> Path:
        return self.paths.root / "var/log/openxpu/xpud.log"

    def installed(self) -> Installed | None:
        if not self.record.exists():
            return None
        data: Installed = json.loads(self.record.read_text())
        return data

    def running_pid(self) -> int | None:
        """The xpud the pid file names, if that process is still an xpud of ours.

        A pid file left by a driver container is stale in the next container: pid
        namespaces differ, and "1" would name the new container's own first process."""
        try:
            pid = int(self.pidfile.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ValueError):
            return None
        if pid == os.getpid() or XPUD_MODULE.encode() not in cmdline:
            return None
        return pid

    # -- steps ----------------------------------------------------------------------------

    def stop_xpud(self) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)  # xpud saves its state on the way out
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            if self.running_pid() != pid:  # gone, or a zombie (its cmdline is empty)
                break
            time.sleep(0.05)
        else:
            raise DriverError(f"xpud (pid {pid}) did not stop within {STOP_TIMEOUT_SECONDS}s")
        self.pidfile.unlink(missing_ok=True)

    def put_files(self, version: str) -> None:
        target = self.paths.driver_dir / version
        lib = target / "lib"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            Path(openxpu_runtime.__file__).parent,
            lib / "openxpu_runtime",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        current = self.paths.driver_dir / "current"
        tmp = self.paths.driver_dir / ".current.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version)
        os.replace(tmp, current)  # switch versions atomically
        bindir = self.paths.root / "usr/local/bin"
        bindir.mkdir(parents=True, exist_ok=True)
        shim = bindir / "xpu-smi"
        shim.write_text(
            SMI_SHIM.format(
                version=version, python=sys.executable, lib="/opt/openxpu/driver/current/lib"
            )
        )
        shim.chmod(0o755)

    def xpud_command(
        self, version: str, profile: str, count: int | None, node: str, extra: list[str]
    ) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            XPUD_MODULE,
            "--root",
            str(self.paths.root),
            "--driver-version",
            version,
            "--profile",
            profile,
            "--node",
            node,
        ]
        if count is not None:
            cmd += ["--count", str(count)]
        return cmd + extra

    # -- verbs ----------------------------------------------------------------------------

    def install(
        self,
        version: str,
        profile: str,
        count: int | None,
        node: str,
        extra: list[str],
        foreground: bool,
    ) -> int:
        spec = load_profile(profile, count)  # fail before touching anything
        before = self.installed()
        if before and before["version"] != version:
            print(f"xpu-driver: upgrading {before['version']} -> {version}")
        self.stop_xpud()
        self.put_files(version)
        devnodes.create(self.paths.device_dir, spec.count, devnodes.default_kind())
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        self.record.write_text(
            json.dumps(
                Installed(
                    version=version,
                    installed_at=time.time(),
                    previous=before["version"] if before and before["version"] != version else None,
                    profile=profile,
                    node=node,
                )
            )
        )
        cmd = self.xpud_command(version, profile, count, node, extra)
        if foreground:
            self.paths.run_dir.mkdir(parents=True, exist_ok=True)
            self.pidfile.write_text(str(os.getpid()))
            print(f"xpu-driver: {version} installed; running xpud in the foreground", flush=True)
            os.execv(cmd[0], cmd)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        self.pidfile.write_text(str(proc.pid))
        try:
            wait_until_answering(self.paths.socket, proc.poll, START_TIMEOUT_SECONDS)
        except Unreachable as exc:
            raise DriverError(f"{exc}; see {self.logfile}") from None
        print(
            f"xpu-driver: {version} installed, {spec.count} x {spec.product}, xpud pid {proc.pid}"
        )
        return 0

    def uninstall(self, purge: bool) -> int:
        self.stop_xpud()
        devnodes.remove(self.paths.device_dir)
        shutil.rmtree(self.paths.driver_dir, ignore_errors=True)
        (self.paths.root / "usr/local/bin/xpu-smi").unlink(missing_ok=True)
        shutil.rmtree(self.paths.run_dir, ignore_errors=True)
        self.record.unlink(missing_ok=True)
        if purge:
            shutil.rmtree(self.paths.state_dir, ignore_errors=True)
        kept = "" if purge else f"; device state kept in {self.paths.state_dir} (--purge drops it)"
        print(f"xpu-driver: uninstalled{kept}")
        return 0

    def status(self) -> int:
        record = self.installed()
        pid = self.running_pid()
        print(json.dumps({"installed": record, "xpud_pid": pid}, indent=2))
        return 0 if record and pid else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="xpu-driver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", type=Path, default=Path(os.environ.get("XPU_ROOT", "/")))
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install or upgrade, then start xpud")
    inst.add_argument("--version", required=True)
    inst.add_argument("--profile", default=os.environ.get("XPU_PROFILE", DEFAULT_PROFILE))
    inst.add_argument("--count", type=int)
    inst.add_argument("--node", default=os.environ.get("NODE_NAME") or os.uname().nodename)
    inst.add_argument("--foreground", action="store_true", help="exec xpud (for containers)")
    inst.add_argument("--xpud-arg", action="append", default=[], help="extra xpud argument")
    uninst = sub.add_parser("uninstall", help="stop xpud and remove the driver")
    uninst.add_argument("--purge", action="store_true", help="also drop saved device state")
    sub.add_parser("status", help="installed version and xpud pid (exit 1 if not running)")
    args = p.parse_args(argv)
    driver = Driver(args.root)
    try:
        if args.command == "install":
            return driver.install(
                args.version, args.profile, args.count, args.node, args.xpud_arg, args.foreground
            )
        if args.command == "uninstall":
            return driver.uninstall(args.purge)
        return driver.status()
    except (DriverError, ProfileError, OSError) as exc:
        print(f"xpu-driver: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
