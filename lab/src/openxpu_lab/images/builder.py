"""Build an image from a Dockerfile with chroot: a Debian base from mmdebstrap, then the
file's RUN/COPY/ENV steps applied to a root filesystem directory, then an OCI archive."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from openxpu_lab import paths, versions
from openxpu_lab.images import dockerfile, oci
from openxpu_lab.progress import Progress
from openxpu_lab.shell import LabError, run

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Like the official -slim images: no docs, man pages or locales.
_SLIM_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
)
_BASES = {f"debian:{versions.DEBIAN_SUITE}-slim", f"debian:{versions.DEBIAN_SUITE}"}


def _host_mirror() -> str:
    """The Debian mirror the host's apt uses (Debian's own packages are reachable)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        with contextlib.suppress(OSError):
            for line in f.read_text().splitlines():
                words = line.split()
                if words[:1] == ["deb"] and "debian-security" not in line:
                    url = next((w for w in words[1:] if "://" in w), "")
                    if url.rstrip("/").endswith("/debian"):
                        return url
                if words[:1] == ["URIs:"] and words[1].rstrip("/").endswith("/debian"):
                    return words[1]
    return "http://deb.debian.org/debian"


def base_tarball(image: str, progress: Progress) -> Path:
    """Debian base root filesystem for `FROM debian:<suite>[-slim]`, cached."""
    if image not in _BASES:
        raise LabError(f"FROM {image}: the lab builds only {sorted(_BASES)} locally")
    out = paths.images_dir() / "base" / f"{image.replace(':', '-')}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root", "--format=tar", "--quiet"]
    if image.endswith("-slim"):
        argv += [f"--dpkgopt=path-exclude={p}" for p in _SLIM_EXCLUDES]
        argv.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    part = out.with_suffix(".part")
    with progress.step(f"making the {image} base with mmdebstrap (cached afterwards)"):
        run([*argv, versions.DEBIAN_SUITE, str(part), _host_mirror()], timeout=1800)
    part.rename(out)
    return out


# The host's package-client setup, handed to RUN steps like the network is: build-time only,
# never stored in the image. Some machines reach the registries through a proxy whose CA
# only the host trusts, or through pip settings in /etc/pip.conf.
_PASS_ENV_PREFIXES = ("PIP_", "UV_")
_PASS_ENV_FILES = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "PIP_CERT",
)


_BUILD_DIR = ".openxpu-build"


def build_env() -> tuple[dict[str, str], dict[Path, str]]:
    """Environment for RUN steps taken from the host, with the host files it names mapped
    to bind mounts under /.openxpu-build (so the image's own /etc/ssl stays writable)."""
    env: dict[str, str] = {}
    binds: dict[Path, str] = {}
    pip_conf = Path("/etc/pip.conf")
    if pip_conf.exists():
        binds[pip_conf] = "/etc/pip.conf"
    for k, v in os.environ.items():
        if not (k.startswith(_PASS_ENV_PREFIXES) or k in _PASS_ENV_FILES):
            continue
        parts = []
        for part in v.split():
            host = Path(part)
            if part.startswith("/") and host.exists():
                if host not in binds:
                    name = "/" + host.name if host.is_file() else ""
                    binds[host] = f"/{_BUILD_DIR}/{len(binds)}{name}"
                part = binds[host]
            parts.append(part)
        env[k] = " ".join(parts)
    return env, binds


@contextlib.contextmanager
def _chroot_mounts(root: Path, binds: dict[Path, str]) -> Iterator[None]:
    mounted: list[Path] = []
    created: list[Path] = []
    try:
        for src, dst, opts in (
            ("proc", "proc", ["-t", "proc"]),
            ("/sys", "sys", ["--rbind"]),
            ("/dev", "dev", ["--rbind"]),
        ):
            target = root / dst
            target.mkdir(exist_ok=True)
            run(["mount", *opts, src, str(target)])
            mounted.append(target)
        for host, inside in binds.items():
            target = root / inside.lstrip("/")
            if not target.exists():
                missing_parents = [p for p in reversed(target.parents) if not p.exists()]
                target.parent.mkdir(parents=True, exist_ok=True)
                created += missing_parents
                if host.is_dir():
                    target.mkdir()
                else:
                    target.touch()
                created.append(target)
            run(["mount", "--bind", "-o", "ro", str(host), str(target)])
            mounted.append(target)
        # Name resolution for apt/pip inside the chroot (registries only).
        resolv = root / "etc" / "resolv.conf"
        if resolv.is_symlink():
            resolv.unlink()
        shutil.copyfile("/etc/resolv.conf", resolv)
        yield
    finally:
        for target in reversed(mounted):
            if run(["umount", "-R", str(target)], check=False).returncode != 0:
                run(["umount", "-R", "-l", str(target)], check=False)
        for c in reversed(created):
            with contextlib.suppress(OSError):
                c.rmdir() if c.is_dir() else c.unlink()
        shutil.rmtree(root / _BUILD_DIR, ignore_errors=True)
        with contextlib.suppress(OSError):
            (root / "etc" / "resolv.conf").write_text("")


def build(dockerfile_path: Path, context: Path, name: str, out: Path, progress: Progress) -> str:
    """Interpret `dockerfile_path` with build context `context`; write an OCI archive."""
    steps = dockerfile.parse(dockerfile_path)
    env: dict[str, str] = {}
    args: dict[str, str] = {}
    cfg: oci.ImageConfig = {}
    workdir = "/"
    user = ""
    with tempfile.TemporaryDirectory(dir=paths.images_dir(), prefix="build-") as tmp:
        root = Path(tmp) / "rootfs"
        root.mkdir()
        for st in steps:
            scope = {**args, **env}
            if st.op == "ARG":
                k, _, v = st.args.partition("=")
                args.setdefault(k.strip(), dockerfile.expand(v.strip(), scope))
            elif st.op == "FROM":
                base = dockerfile.expand(st.args.split()[0], scope)
                with tarfile.open(base_tarball(base, progress)) as tar:
                    tar.extractall(root, filter="fully_trusted")
                env["PATH"] = DEFAULT_PATH
            elif st.op == "ENV":
                for k, v in dockerfile.key_values(st.args).items():
                    env[k] = dockerfile.expand(v, {**args, **env})
            elif st.op == "WORKDIR":
                workdir = os.path.join(workdir, dockerfile.expand(st.args, scope))
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif st.op == "USER":
                user = dockerfile.expand(st.args, scope)
            elif st.op == "COPY":
                _copy(context, root, workdir, dockerfile.expand(st.args, scope))
            elif st.op == "RUN":
                _run(root, workdir, {**args, **env}, st, progress)
            elif st.op == "ENTRYPOINT":
                cfg["Entrypoint"] = dockerfile.exec_or_shell(st.args)
            elif st.op == "CMD":
                cfg["Cmd"] = dockerfile.exec_or_shell(st.args)
            elif st.op == "LABEL":
                cfg.setdefault("Labels", {}).update(dockerfile.key_values(st.args))
        cfg["Env"] = [f"{k}={v}" for k, v in env.items()]
        cfg["WorkingDir"] = workdir
        if user:
            cfg["User"] = user
        with progress.step(f"packing {name}"):
            return oci.pack(root, name, cfg, out)


def _copy(context: Path, root: Path, workdir: str, args: str) -> None:
    parts = [p for p in args.split() if not p.startswith("--")]
    if len(parts) < 2:
        raise LabError(f"COPY needs a source and a destination: {args}")
    *srcs, dest = parts
    dest_path = root / os.path.join(workdir, dest).lstrip("/")
    for s in srcs:
        src = (context / s).resolve()
        if not src.is_relative_to(context.resolve()) or not src.exists():
            raise LabError(f"COPY {s}: not found in the build context {context}")
        if src.is_dir():
            shutil.copytree(src, dest_path, symlinks=True, dirs_exist_ok=True)
        else:
            target = dest_path / src.name if dest.endswith("/") or dest_path.is_dir() else dest_path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def _run(
    root: Path, workdir: str, env: dict[str, str], st: dockerfile.Instruction, progress: Progress
) -> None:
    argv = dockerfile.exec_or_shell(st.args)
    short = st.args if len(st.args) < 70 else st.args[:67] + "..."
    host_env, binds = build_env()
    run_env = {**host_env, **env}
    with progress.step(f"RUN {short}"), _chroot_mounts(root, binds):
        proc = subprocess.run(
            [
                "chroot",
                str(root),
                "/usr/bin/env",
                "-i",
                *[f"{k}={v}" for k, v in run_env.items()],
                "/bin/sh",
                "-c",
                'cd "$1" && shift && exec "$@"',
                "sh",
                workdir,
                *argv,
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise LabError(f"Dockerfile line {st.line}: RUN failed ({proc.returncode}):\n{tail}")
