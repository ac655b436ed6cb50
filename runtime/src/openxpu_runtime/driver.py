"""`xpu-driver`: install, upgrade and uninstall the emulated XPU driver on a host root.

Install copies this runtime (the `openxpu_runtime` package) to
ROOT/opt/openxpu/driver/<version>/lib, points the `current` link at it, writes the xpu-smi
shim to ROOT/usr/local/bin and <version>/bin, creates the /dev/xpuN nodes and starts xpud
from that copy. With NVIDIA compatibility (the default) it also installs libnvidia-ml.so.1
in <version>/lib and `nvidia-smi` links to the shim beside each xpu-smi: what the device
plugin mounts into XPU containers.
A version is that copy: xpud and xpu-smi run its files, with the installer's Python and
third-party libraries. Installing another version is an in-place upgrade: xpud stops
(saving its state), the files are swapped, and the new version's xpud resumes from the
same device state. The driver DaemonSet runs `xpu-driver install --foreground`, so xpud
is its main process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NotRequired, TypedDict

import openxpu_runtime
from openxpu_runtime.client import wait_until_answering
from openxpu_runtime.daemon import devnodes
from openxpu_runtime.errors import SELF_TEST_FAILED_EXIT, CommandLineParser, Unreachable
from openxpu_runtime.paths import HostPaths
from openxpu_runtime.profiles import DEFAULT_PROFILE, ProfileError, load_profile

XPUD_MODULE = "openxpu_runtime.daemon.main"
STOP_TIMEOUT_SECONDS = 15.0
START_TIMEOUT_SECONDS = 20.0
# A version names a directory under ROOT/opt/openxpu/driver: one plain path component.
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
CURRENT = "current"
# -P: the caller's working directory must not shadow the installed package. XPU_SMI_NAME:
# `python -m` hides the name the shim was called by, and as `nvidia-smi` it answers as such.
# In a container the installer's Python is absent: the image's python3 runs the queries
# (they use the standard library only).
SMI_SHIM = """#!/bin/sh
# Installed by xpu-driver {version}.
export XPUD_SOCKET="${{XPUD_SOCKET:-{socket}}}"
export XPU_SMI_NAME="${{0##*/}}"
python={python}
[ -x "$python" ] || python=python3
PYTHONPATH="{lib}${{PYTHONPATH:+:$PYTHONPATH}}" exec "$python" -P -m openxpu_runtime.smi "$@"
"""
SMI = "xpu-smi"
NVIDIA_SMI = "nvidia-smi"
NVML_LIBRARY = "libnvidia-ml.so.1"
# Where the library to install is: the image sets this; a checkout has `make setup`'s build.
NVML_LIBRARY_ENV = "XPU_NVML_LIBRARY"


class DriverError(Exception):
    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_version(version: str) -> str:
    if not VERSION_NAME.fullmatch(version) or ".." in version or version == CURRENT:
        raise DriverError(
            f"--version {version!r} is not a version name: use letters, digits and . _ + - "
            f"(at most 64, no '..', not {CURRENT!r}), e.g. 1.2.0"
        )
    return version


def is_xpud(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return pid != os.getpid() and XPUD_MODULE.encode() in cmdline


def nvml_library() -> Path:
    """The libnvidia-ml.so.1 this installer installs: $XPU_NVML_LIBRARY, else the build in
    the source checkout this runtime runs from."""
    given = os.environ.get(NVML_LIBRARY_ENV)
    if given:
        return Path(given)
    checkout = Path(openxpu_runtime.__file__).resolve().parents[2]  # runtime/ in a checkout
    return checkout / "nvml" / "lib" / NVML_LIBRARY


def is_our_link(path: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == SMI


class Installed(TypedDict):
    version: str
    installed_at: float
    previous: str | None
    profile: str
    node: str
    nvidia_compat: NotRequired[bool]


class Driver:
    def __init__(self, root: Path) -> None:
        self.paths = HostPaths(root.absolute())

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
        try:
            data: Installed = json.loads(self.record.read_text())
        except ValueError as exc:
            raise DriverError(f"{self.record} is not an install record ({exc})") from None
        return data

    def lib(self, version: str) -> Path:
        """Where a version's runtime lives: what its xpud and xpu-smi import."""
        return self.paths.driver_dir / check_version(version) / "lib"

    def running_pid(self) -> int | None:
        """The xpud the pid file names, if that process is still an xpud of ours.

        A pid file left by a driver container is stale in the next container: pid
        namespaces differ, and "1" would name the new container's own first process."""
        try:
            pid = int(self.pidfile.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if is_xpud(pid) else None

    # -- steps ----------------------------------------------------------------------------

    def stop_xpud(self) -> None:
        pid = self.running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)  # xpud saves its state on the way out
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        # Wait for the process, not its pid file: xpud removes that before it exits, and
        # holds the state lock until it has (the next xpud would find it taken).
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            if not is_xpud(pid):  # gone, or a zombie (its cmdline is empty, its files closed)
                break
            time.sleep(0.05)
        else:
            raise DriverError(f"xpud (pid {pid}) did not stop within {STOP_TIMEOUT_SECONDS}s")
        self.pidfile.unlink(missing_ok=True)

    @property
    def host_bin(self) -> Path:
        return self.paths.root / "usr/local/bin"

    def put_files(self, version: str, nvml: Path | None) -> None:
        """The version's files; with `nvml` (the library to install) NVIDIA's names too."""
        lib = self.lib(version)  # a checked name: never a path outside driver_dir
        if lib.parent.exists():
            shutil.rmtree(lib.parent)
        shutil.copytree(
            Path(openxpu_runtime.__file__).parent,
            lib / "openxpu_runtime",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        if nvml is not None:
            shutil.copyfile(nvml, lib / NVML_LIBRARY)
            (lib / NVML_LIBRARY).chmod(0o755)
        current = self.paths.driver_dir / CURRENT
        tmp = self.paths.driver_dir / ".current.new"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(version)
        os.replace(tmp, current)  # switch versions atomically
        # The same shim in both places: it runs `current`'s copy, and in a container the
        # device plugin mounts the version's directory at that same path.
        shim = SMI_SHIM.format(
            version=version, python=sys.executable, lib=current / "lib", socket=self.paths.socket
        )
        for bindir in (lib.parent / "bin", self.host_bin):
            bindir.mkdir(parents=True, exist_ok=True)
            (bindir / SMI).write_text(shim)
            (bindir / SMI).chmod(0o755)
            self.put_nvidia_smi(bindir / NVIDIA_SMI, nvml is not None)

    def put_nvidia_smi(self, link: Path, wanted: bool) -> None:
        """`nvidia-smi` as a link to the xpu-smi beside it; a real nvidia-smi (anything but
        our link) is never replaced nor removed."""
        if is_our_link(link):
            link.unlink()
        elif link.exists() or link.is_symlink():
            if wanted:
                print(f"xpu-driver: {link} exists and is not ours: left as it is", file=sys.stderr)
            return
        if wanted:
            link.symlink_to(SMI)

    def xpud_command(
        self, version: str, profile: str, count: int | None, node: str, extra: list[str]
    ) -> list[str]:
        cmd = [
            sys.executable,
            "-P",  # import the installed copy, whatever the working directory holds
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

    def xpud_env(self, version: str) -> dict[str, str]:
        """The environment that makes xpud run `version`'s files rather than the installer's."""
        inherited = os.environ.get("PYTHONPATH")
        path = str(self.lib(version)) + (f":{inherited}" if inherited else "")
        return {**os.environ, "PYTHONPATH": path}

    def xpud_said(self, log_offset: int) -> str:
        """xpud's own last words in its log since `log_offset`: its one-line error."""
        try:
            with open(self.logfile, "rb") as log:
                log.seek(log_offset)
                lines = log.read().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return ""
        said = [line for line in lines if line.startswith("xpud: ")] or lines
        return said[-1].strip() if said else ""

    # -- verbs ----------------------------------------------------------------------------

    def install(
        self,
        version: str,
        profile: str,
        count: int | None,
        node: str,
        extra: list[str],
        foreground: bool,
        nvidia_compat: bool = True,
    ) -> int:
        check_version(version)  # fail before touching anything
        spec = load_profile(profile, count)
        nvml = nvml_library() if nvidia_compat else None
        if nvml is not None and not nvml.is_file():
            raise DriverError(
                f"{nvml} not found: build it (make setup), name it in ${NVML_LIBRARY_ENV}, "
                "or install with --no-nvidia-compat"
            )
        before = self.installed()
        if before and before["version"] != version:
            print(f"xpu-driver: upgrading {before['version']} -> {version}")
        self.stop_xpud()
        self.put_files(version, nvml)
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
                    nvidia_compat=nvidia_compat,
                )
            )
        )
        cmd = self.xpud_command(version, profile, count, node, extra)
        env = self.xpud_env(version)
        if foreground:
            print(f"xpu-driver: {version} installed; running xpud in the foreground", flush=True)
            os.execve(cmd[0], cmd, env)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as log:
            log_offset = log.tell()
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            wait_until_answering(self.paths.socket, proc.poll, START_TIMEOUT_SECONDS)
        except Unreachable as exc:
            said = self.xpud_said(log_offset) or str(exc)
            # A failed self-test keeps its own exit status: retrying this version is futile.
            code = SELF_TEST_FAILED_EXIT if proc.poll() == SELF_TEST_FAILED_EXIT else 2
            raise DriverError(f"xpud did not start: {said} (log: {self.logfile})", code) from None
        print(
            f"xpu-driver: {version} installed, {spec.count} x {spec.product}, xpud pid {proc.pid}"
        )
        return 0

    def uninstall(self, purge: bool) -> int:
        self.stop_xpud()
        devnodes.remove(self.paths.device_dir)
        shutil.rmtree(self.paths.driver_dir, ignore_errors=True)
        self.put_nvidia_smi(self.host_bin / NVIDIA_SMI, wanted=False)
        (self.host_bin / SMI).unlink(missing_ok=True)
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
    p = CommandLineParser(
        prog="xpu-driver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--root", type=Path, default=Path(os.environ.get("XPU_ROOT", "/")))
    sub = p.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="install or upgrade, then start xpud")
    inst.add_argument("--version", required=True, help="a version name, e.g. 1.2.0")
    inst.add_argument("--profile", default=os.environ.get("XPU_PROFILE", DEFAULT_PROFILE))
    inst.add_argument("--count", type=int)
    inst.add_argument("--node", default=os.environ.get("NODE_NAME") or os.uname().nodename)
    inst.add_argument("--foreground", action="store_true", help="exec xpud (for containers)")
    inst.add_argument(
        "--nvidia-compat",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"install {NVML_LIBRARY} and nvidia-smi for NVIDIA's tools (default: on)",
    )
    recovery = inst.add_mutually_exclusive_group()
    recovery.add_argument(
        "--reset-state",
        action="append_const",
        const="--reset-state",
        dest="recovery",
        help="xpud moves the saved device state aside and starts with fresh devices",
    )
    recovery.add_argument(
        "--restore-backup",
        action="append_const",
        const="--restore-backup",
        dest="recovery",
        help="xpud starts from the last good state backup",
    )
    inst.add_argument("--xpud-arg", action="append", default=[], help="extra xpud argument")
    uninst = sub.add_parser("uninstall", help="stop xpud and remove the driver")
    uninst.add_argument("--purge", action="store_true", help="also drop saved device state")
    sub.add_parser("status", help="installed version and xpud pid (exit 1 if not running)")
    args = p.parse_args(argv)
    driver = Driver(args.root)
    try:
        if args.command == "install":
            return driver.install(
                args.version,
                args.profile,
                args.count,
                args.node,
                (args.recovery or []) + args.xpud_arg,
                args.foreground,
                args.nvidia_compat,
            )
        if args.command == "uninstall":
            return driver.uninstall(args.purge)
        return driver.status()
    except (DriverError, ProfileError, OSError) as exc:
        print(f"xpu-driver: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, DriverError) else 2


if __name__ == "__main__":
    sys.exit(main())
