"""The OpenXPU image: wheels of the workspace packages, their dependencies exported from
uv.lock (requirements.txt, hash-pinned), the NVML library built from runtime/nvml, and
images/openxpu/Dockerfile."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import tomllib
from pathlib import Path

from openxpu_lab import paths
from openxpu_lab.images import builder
from openxpu_lab.progress import Progress
from openxpu_lab.shell import LabError, run

OPENXPU_NAME = "openxpu/openxpu:dev"
# Part of the cache key: archives made by an earlier builder are not reused.
BUILDER = "buildah bud"
# The component folders whose packages go into the image, when they exist.
MEMBERS = ("runtime", "device-plugin", "exporter", "operator")
# libnvidia-ml.so.1: its sources are part of the key; `make nvml` builds it (cargo).
NVML_DIR = Path("runtime/nvml")
NVML_SOURCES = ("Cargo.toml", "Cargo.lock", "build.rs", "src")
NVML_LIBRARY = NVML_DIR / "lib" / "libnvidia-ml.so.1"


def repo_root() -> Path:
    """The workspace checkout: $OPENXPU_REPO, else the nearest parent holding images/openxpu."""
    env = os.environ.get("OPENXPU_REPO")
    if env:
        return Path(env)
    for start in (Path.cwd(), Path(__file__).resolve()):
        for d in [start, *start.parents]:
            if (d / "images" / "openxpu" / "Dockerfile").is_file():
                return d
    raise LabError(
        "cannot find the OpenXPU checkout (images/openxpu/Dockerfile); "
        "run from inside it or set OPENXPU_REPO"
    )


def members(repo: Path) -> list[Path]:
    return [repo / m for m in MEMBERS if (repo / m / "pyproject.toml").is_file()]


def source_key(repo: Path) -> str:
    """Hash of the Dockerfile, uv.lock, every member's sources and the NVML library's: the
    image's cache key (computed before building anything, so a warm start costs only this
    hash)."""
    h = hashlib.sha256()
    h.update(BUILDER.encode())
    h.update((repo / "images" / "openxpu" / "Dockerfile").read_bytes())
    h.update((repo / "uv.lock").read_bytes())  # the image installs what the lock pins
    files: list[Path] = []
    for m in members(repo):
        files += [m / "pyproject.toml", *sorted((m / "src").rglob("*"))]
    for source in (repo / NVML_DIR / s for s in NVML_SOURCES):
        files += [source] if source.is_file() else sorted(source.rglob("*"))
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(repo)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _uv() -> str | None:
    found = shutil.which("uv")
    local = Path.home() / ".local" / "bin" / "uv"
    return found or (str(local) if local.exists() else None)


def build_wheels(repo: Path, out: Path, progress: Progress) -> None:
    out.mkdir(parents=True, exist_ok=True)
    uv = _uv()
    for m in members(repo):
        with progress.step(f"building the wheel of {m.name}"):
            if uv:
                run([uv, "build", "--wheel", "--quiet", "--out-dir", str(out), str(m)], timeout=600)
            else:
                run(
                    [
                        "python3",
                        "-m",
                        "pip",
                        "wheel",
                        "--no-deps",
                        "--quiet",
                        "-w",
                        str(out),
                        str(m),
                    ],
                    timeout=600,
                )


def build_nvml(repo: Path, out: Path, progress: Progress) -> None:
    """The library as `make setup` builds it (a no-op when it is up to date), into `out`."""
    with progress.step("building libnvidia-ml.so.1 (cargo)"):
        run(["make", "-s", "nvml"], cwd=repo, timeout=1800)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / NVML_LIBRARY, out / NVML_LIBRARY.name)


def export_requirements(repo: Path, out: Path, progress: Progress) -> None:
    """The members' third-party dependencies as uv.lock pins them, with hashes, so the image
    installs what the tests ran against instead of resolving afresh."""
    uv = _uv()
    if uv is None:
        raise LabError("uv is needed to export uv.lock for the image (`make setup` installs it)")
    names = [
        tomllib.loads((m / "pyproject.toml").read_text())["project"]["name"] for m in members(repo)
    ]
    with progress.step("exporting the locked dependencies"):
        run(
            [
                uv, "export", "--frozen", "--no-dev", "--no-emit-workspace", "--quiet",
                *(arg for name in names for arg in ("--package", name)),
                "--output-file", str(out),
            ],
            cwd=repo,
            timeout=120,
        )  # fmt: skip


def ensure_image(progress: Progress, force: bool = False) -> Path:
    """The OCI archive of the OpenXPU image for the current sources (cached by content)."""
    repo = repo_root()
    if not members(repo):
        raise LabError(f"no OpenXPU packages ({', '.join(MEMBERS)}) found in {repo}")
    out = paths.images_dir() / f"openxpu-{source_key(repo)}.tar"
    if out.exists() and not force:
        return out
    with tempfile.TemporaryDirectory(prefix="openxpu-ctx-") as tmp:
        ctx = Path(tmp)
        shutil.copy2(repo / "images" / "openxpu" / "Dockerfile", ctx / "Dockerfile")
        build_wheels(repo, ctx / "wheels", progress)
        export_requirements(repo, ctx / "requirements.txt", progress)
        build_nvml(repo, ctx / "nvml", progress)
        paths.images_dir().mkdir(parents=True, exist_ok=True)
        builder.build(ctx / "Dockerfile", ctx, OPENXPU_NAME, out, progress)
    for old in paths.images_dir().glob("openxpu-*.tar"):
        if old != out:
            old.unlink()
    return out
