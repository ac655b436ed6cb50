"""Images built by buildah (`bud --isolation chroot`) from a local mmdebstrap base: every
Dockerfile instruction and multi-stage builds, the OCI archive containerd imports, the
content-keyed cache, and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from openxpu_lab import hostdeps, paths
from openxpu_lab.images import builder, openxpu, store
from openxpu_lab.progress import Progress
from openxpu_lab.shell import LabError

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="buildah --isolation chroot needs root"),
]

QUIET = Progress(quiet=True)
# The machine's containerd build (taken before the tests point OPENXPU_CACHE elsewhere).
CONTAINERD_BIN = paths.containerd_bin_dir()
_WITH_CONTAINERD = {**os.environ, "PATH": f"{CONTAINERD_BIN}:{os.environ['PATH']}"}  # its shim


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private lab cache (its own buildah storage and archives) sharing the machine's
    mmdebstrap base, which takes minutes to make and never changes."""
    real_base = paths.images_dir() / "base"
    root = tmp_path_factory.mktemp("cache")
    (root / "images").mkdir()
    if real_base.is_dir():
        (root / "images" / "base").symlink_to(real_base)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENXPU_CACHE", str(root))
        hostdeps.ensure_packages(["buildah", "mmdebstrap"], QUIET)
        yield root


def _read_archive(archive: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """(index manifest descriptor, image config, path -> content of the image's files as its
    layers stack up (whiteouts applied); directories and links as b"")."""
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> IO[bytes]:
            f = tar.extractfile(f"blobs/sha256/{digest.removeprefix('sha256:')}")
            assert f is not None
            return f

        (desc,) = json.load(blob_of(tar, "index.json"))["manifests"]
        manifest = json.load(blob(desc["digest"]))
        config = json.load(blob(manifest["config"]["digest"]))
        files: dict[str, bytes] = {}
        for layer in manifest["layers"]:
            with tarfile.open(fileobj=blob(layer["digest"]), mode="r:*") as lt:
                for m in lt:
                    path = m.name.removeprefix("./")
                    parent, _, base = path.rpartition("/")
                    if base.startswith(".wh."):  # whiteout: deleted by this layer
                        gone = parent if base == ".wh..wh..opq" else f"{parent}/{base[4:]}"
                        gone = gone.lstrip("/")
                        files = {
                            k: v
                            for k, v in files.items()
                            if k != gone and not k.startswith(gone + "/")
                        }
                        continue
                    f = lt.extractfile(m) if m.isfile() and m.size < 1 << 16 else None
                    files[path] = f.read() if f else b""
    return desc, config, files


def blob_of(tar: tarfile.TarFile, name: str) -> IO[bytes]:
    f = tar.extractfile(name)
    assert f is not None
    return f


MULTI_STAGE = """\
ARG BASE=debian:bookworm-slim
ARG GREETING=hello
FROM ${BASE} AS build
ARG GREETING
WORKDIR /src
COPY greeting.txt ./
RUN echo "$GREETING from the build stage" >> greeting.txt && mkdir out && cp greeting.txt out/

FROM ${BASE}
ARG GREETING
ENV APP_HOME=/opt/app LANG=C.UTF-8
WORKDIR $APP_HOME
COPY --from=build /src/out/ ./data/
ADD extra.txt /etc/extra.txt
RUN useradd --uid 1234 --no-create-home app && test "$GREETING" = hello
USER app
EXPOSE 8080
LABEL org.example.purpose="lab test"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/bin/cat"]
CMD ["data/greeting.txt"]
"""


@pytest.fixture(scope="module")
def app_archive(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    ctx = tmp_path_factory.mktemp("ctx")
    (ctx / "Dockerfile").write_text(MULTI_STAGE)
    (ctx / "greeting.txt").write_text("line one\n")
    (ctx / "extra.txt").write_text("extra\n")
    out = ctx.parent / "app.tar"
    return out, builder.build(ctx / "Dockerfile", ctx, "openxpu/test-app:1", out, QUIET)


def test_multi_stage_build_gives_the_right_oci_config(app_archive: tuple[Path, str]) -> None:
    out, digest = app_archive
    desc, config, files = _read_archive(out)
    assert desc["digest"] == digest
    assert desc["annotations"]["io.containerd.image.name"] == "docker.io/openxpu/test-app:1"
    cfg = config["config"]
    assert cfg["Entrypoint"] == ["/bin/cat"]
    assert cfg["Cmd"] == ["data/greeting.txt"]
    assert cfg["User"] == "app"
    assert cfg["WorkingDir"] == "/opt/app"
    assert "APP_HOME=/opt/app" in cfg["Env"] and "LANG=C.UTF-8" in cfg["Env"]
    assert any(e.startswith("PATH=/usr/local/sbin:") for e in cfg["Env"])
    assert cfg["Labels"]["org.example.purpose"] == "lab test"
    assert "8080/tcp" in cfg["ExposedPorts"]
    assert cfg["StopSignal"] == "SIGTERM"
    # The final stage has what COPY --from took out of the build stage (made there by RUN
    # with the global ARG's default), not the build stage itself.
    assert files["opt/app/data/greeting.txt"] == b"line one\nhello from the build stage\n"
    assert files["etc/extra.txt"] == b"extra\n"
    assert b"app:x:1234:" in files["etc/passwd"]
    assert not any(f.startswith("src/") for f in files)
    # The host's pip settings were build-time secrets: no trace in any layer.
    assert "etc/pip.conf" not in files and not any(f.startswith("run/secrets") for f in files)


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A private containerd (no CRI, own root, state and socket; not the lab's): the
    `ctr` command line that talks to it."""
    if not (CONTAINERD_BIN / "containerd").exists():
        pytest.skip("containerd is not built yet (`openxpu-lab build`)")
    d = tmp_path_factory.mktemp("containerd")
    sock = d / "c.sock"
    (d / "config.toml").write_text(
        f'version = 2\nroot = "{d}/root"\nstate = "{d}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    with (d / "log").open("w") as log:
        proc = subprocess.Popen(
            [CONTAINERD_BIN / "containerd", "--config", d / "config.toml"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_WITH_CONTAINERD,
        )
    try:
        ctr = [str(CONTAINERD_BIN / "ctr"), "--address", str(sock), "--namespace", "buildah-test"]
        for _ in range(100):
            if (
                sock.exists()
                and subprocess.run([*ctr, "version"], capture_output=True).returncode == 0
            ):
                break
            time.sleep(0.1)
        yield ctr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_archive_imports_into_containerd_and_runs(
    app_archive: tuple[Path, str], containerd: list[str]
) -> None:
    archive, digest = app_archive
    assert store.archive_name_digest(archive) == ("docker.io/openxpu/test-app:1", digest)
    subprocess.run([*containerd, "images", "import", str(archive)], check=True, timeout=300)
    listed = subprocess.run(
        [*containerd, "images", "ls"], check=True, capture_output=True, text=True
    ).stdout
    row = f"docker.io/openxpu/test-app:1 application/vnd.oci.image.manifest.v1+json {digest}"
    assert row in " ".join(listed.split())
    # ENTRYPOINT + CMD, relative to WORKDIR, as USER app: the file the build stage made.
    ran = subprocess.run(
        [*containerd, "run", "--rm", "docker.io/openxpu/test-app:1", "buildah-test-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_WITH_CONTAINERD,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "line one\nhello from the build stage\n"


@pytest.mark.parametrize(
    ("dockerfile", "expected"),
    [
        (
            "FROM debian:bookworm-slim\nENV A=1\nRUN echo doing it; echo it broke >&2; exit 3\n",
            'STEP "RUN echo doing it; echo it broke >&2; exit 3": exit status 3 '
            "(last output: it broke)",
        ),
        (
            "FROM debian:bookworm-slim\nCOPY not-in-context.txt /x\n",
            'STEP "COPY not-in-context.txt /x"',
        ),
        ("FROM debian:bookworm-slim\nFROBNICATE x\n", 'Unknown instruction: "FROBNICATE"'),
        ("FROM quay.io/nowhere/nothing:1\n", "no image registry here"),
        ("RUN true\n", "no FROM instruction"),
    ],
)
def test_a_broken_dockerfile_is_a_one_line_error_naming_the_step(
    cache: Path, tmp_path: Path, dockerfile: str, expected: str
) -> None:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    with pytest.raises(LabError) as err:
        builder.build(
            tmp_path / "Dockerfile", tmp_path, "openxpu/broken:1", tmp_path / "o.tar", QUIET
        )
    message = str(err.value)
    assert "\n" not in message and expected in message, message
    assert message.startswith(str(tmp_path / "Dockerfile"))
    assert not (tmp_path / "o.tar").exists()
    # The failed build left no build container, hence no mount, behind.
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(cache) not in mounts


def _image_ids(*args: str) -> set[str]:
    out = subprocess.run(
        [*builder.buildah("images", "--quiet", "--no-trunc", *args)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_a_rebuild_leaves_no_dangling_image_behind(cache: Path, tmp_path: Path) -> None:
    """Each source change rebuilds the image under the same tag: the old one is pruned
    rather than piling up in buildah's storage."""
    dockerfile = tmp_path / "Dockerfile"
    built = []
    for content in ("one", "two"):
        dockerfile.write_text(f"FROM debian:bookworm-slim\nRUN echo {content} > /v\n")
        builder.build(dockerfile, tmp_path, "openxpu/rebuilt:1", tmp_path / "o.tar", QUIET)
        built.append(_image_ids("openxpu/rebuilt:1"))
    assert built[0] != built[1]
    assert not built[0] & _image_ids(), "the first build's image is still in the storage"
    assert not _image_ids("--filter", "dangling=true")


@pytest.fixture
def counted_buildah(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """buildah behind a shim on PATH that logs each call: proof of whether it ran."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    log = tmp_path / "buildah-calls"
    shim = shim_dir / "buildah"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec /usr/bin/buildah "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim_dir}:{os.environ['PATH']}")
    return log


def test_openxpu_image_builds_and_a_warm_start_never_runs_buildah(
    cache: Path, counted_buildah: Path
) -> None:
    archive = openxpu.ensure_image(QUIET)
    assert counted_buildah.read_text().count(" bud ") == 1
    _, config, files = _read_archive(archive)
    cfg = config["config"]
    assert cfg["Cmd"] == ["python3"]
    assert cfg["Env"][-1].startswith("PATH=/opt/openxpu/bin:")
    assert "opt/openxpu/bin/python3" in files
    assert any(
        f.startswith("opt/openxpu/lib/python3.11/site-packages/openxpu_runtime") for f in files
    )
    assert "tmp/wheels" not in files and "tmp/requirements.txt" not in files
    # The NVML library xpu-driver installs, where the image's XPU_NVML_LIBRARY says.
    assert "usr/lib/openxpu/libnvidia-ml.so.1" in files
    assert "XPU_NVML_LIBRARY=/usr/lib/openxpu/libnvidia-ml.so.1" in cfg["Env"]
    # The pip step's secrets (host pip settings, proxy CA) left nothing behind.
    assert "etc/pip.conf" not in files and "run/pip-ca.crt" not in files
    assert not any(f.startswith("run/secrets") for f in files)

    counted_buildah.unlink()
    mtime = archive.stat().st_mtime_ns
    assert openxpu.ensure_image(QUIET) == archive
    assert not counted_buildah.exists()  # the cache key alone decided: buildah never ran
    assert archive.stat().st_mtime_ns == mtime
