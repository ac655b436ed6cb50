"""Build images from Dockerfiles with buildah (`buildah bud --isolation chroot`): a Debian
base made locally with mmdebstrap and committed into buildah's own storage, `--pull=never`
(no image registry), then the image pushed out as an OCI archive for containerd to import."""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import tempfile
from pathlib import Path

from openxpu_lab import paths, versions
from openxpu_lab.images import oci
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
BASES = (f"debian:{versions.DEBIAN_SUITE}-slim", f"debian:{versions.DEBIAN_SUITE}")
# Secrets a Dockerfile may mount (`RUN --mount=type=secret,id=...`): the host's pip settings
# and the CA they trust. Build-time only, never in a layer; absent under a plain `docker build`.
PIP_CONF_SECRET = "pip.conf"
PIP_CA_SECRET = "pip-ca.crt"
# Where the Dockerfile mounts the CA: in /run, which every base has (buildah would leave
# the default /run/secrets behind as an empty directory in the layer).
PIP_CA_TARGET = "/run/pip-ca.crt"


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
    if image not in BASES:
        raise LabError(f"FROM {image}: the lab builds only {list(BASES)} locally")
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


def buildah(*args: str | Path) -> list[str | Path]:
    """buildah on the lab's own storage (beside the image cache, not the host's podman store)."""
    store = paths.images_dir() / "buildah"
    return [
        "buildah",
        "--root", store / "storage",
        "--runroot", store / "run",
        "--storage-driver", "overlay",
        # No private bind mount of the storage dir left behind on the host after buildah exits.
        "--storage-opt", "overlay.skip_mount_home=true",
        *args,
    ]  # fmt: skip


def ensure_base(image: str, progress: Progress) -> None:
    """`image` (a Debian base) in buildah's storage, made from the mmdebstrap tarball."""
    ref = oci.full_name(image)
    if run(buildah("inspect", "--type", "image", ref), check=False).returncode == 0:
        return
    tarball = base_tarball(image, progress)
    with progress.step(f"committing the {image} base into buildah's storage"):
        ctr = run(buildah("from", "--quiet", "scratch")).stdout.strip()
        try:
            run(buildah("add", "--quiet", ctr, tarball, "/"), timeout=600)  # unpacks the tar
            run(buildah("config", "--env", f"PATH={DEFAULT_PATH}", "--cmd", "bash", ctr))
            run(buildah("commit", "--quiet", ctr, ref), timeout=600)
        finally:
            run(buildah("rm", ctr), check=False)


def _pip_secrets(tmp: Path) -> list[str]:
    """`--secret` options carrying the host's pip settings (/etc/pip.conf, then PIP_*
    variables) and the CA bundle they name: some machines reach PyPI only through a proxy
    whose CA just the host trusts. Settings naming other host paths make no sense inside."""
    conf = configparser.ConfigParser(interpolation=None)
    with contextlib.suppress(OSError, configparser.Error):
        conf.read("/etc/pip.conf")
    if not conf.has_section("global"):
        conf.add_section("global")
    for key, value in os.environ.items():
        if key.startswith("PIP_"):
            conf["global"][key[4:].lower().replace("_", "-")] = value
    ca = conf["global"].get("cert", "")
    secrets: list[str] = []
    if ca and Path(ca).is_file():
        secrets += ["--secret", f"id={PIP_CA_SECRET},src={ca}"]
        conf["global"]["cert"] = PIP_CA_TARGET
    for section in conf.sections():
        for key, value in list(conf[section].items()):
            if value.startswith("/") and value != PIP_CA_TARGET:
                conf.remove_option(section, key)
    pip_conf = tmp / PIP_CONF_SECRET
    with pip_conf.open("w") as fh:
        conf.write(fh)
    return [*secrets, "--secret", f"id={PIP_CONF_SECRET},src={pip_conf}"]


def _build_error(dockerfile: Path, output: str) -> LabError:
    """One line naming the failing step, from buildah's `Error: building at STEP ...`."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    err = next((line for line in reversed(lines) if line.startswith("Error: ")), "")
    err = err.removeprefix("Error: ").split(" &imagebuilder.", 1)[0]  # drop Go struct dumps
    if "image not known" in err:
        err += f" (no image registry here: FROM may name only {' or '.join(BASES)})"
    noise = ("subprocess exited", "Error: ", "time=", "STEP ", "[", "-->", "Successfully ")
    said = [line for line in lines if not line.startswith(noise)]
    if re.search(r"exit status \d+$", err) and said:  # a RUN step failed: say what it said
        err += f" (last output: {said[-1][:200]})"
    return LabError(f"{dockerfile}: {err or 'buildah failed: ' + (lines or ['?'])[-1]}")


_FROM = re.compile(r"^\s*FROM\s", re.IGNORECASE | re.MULTILINE)


def _bases_named(dockerfile_text: str) -> list[str]:
    """The local bases the file names (in FROM or in an ARG that FROM uses)."""
    named = r"(?<![\w./-])(?:docker\.io/library/)?{}(?![\w.-])"
    return [b for b in BASES if re.search(named.format(re.escape(b)), dockerfile_text)]


def build(dockerfile: Path, context: Path, name: str, out: Path, progress: Progress) -> str:
    """Build `dockerfile` with build context `context` as image `name`; write its OCI archive
    to `out` and return the manifest digest."""
    text = dockerfile.read_text()
    if not _FROM.search(text):
        raise LabError(f"{dockerfile}: no FROM instruction")
    for base in _bases_named(text):
        ensure_base(base, progress)
    paths.images_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.images_dir(), prefix="build-") as tmp:
        argv = buildah(
            "bud",
            "--isolation", "chroot",
            "--pull=never",
            "--layers",  # unchanged leading steps (apt-get) come from buildah's cache
            "--force-rm",  # a failed step leaves no build container (nor its mount)
            "--format", "oci",
            *_pip_secrets(Path(tmp)),
            "--file", dockerfile,
            "--tag", name,
            context,
        )  # fmt: skip
        with progress.step(f"buildah bud {name}"):
            proc = run(argv, check=False, timeout=3600)
        if proc.returncode != 0:
            raise _build_error(dockerfile, proc.stdout + "\n" + proc.stderr)
        layout = Path(tmp) / "oci"
        with progress.step(f"exporting {name} as an OCI archive"):
            run(buildah("push", "--quiet", name, f"oci:{layout}:{name}"), timeout=1800)
            digest = oci.archive_layout(layout, name, out)
        # The tag moved: the image it named before (each source change makes one, ~150 MB)
        # is dangling now. The new image's layers, the step cache of this build, stay.
        run(buildah("rmi", "--prune"), check=False, timeout=600)
        return digest
