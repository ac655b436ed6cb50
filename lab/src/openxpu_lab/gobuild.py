"""Build Kubernetes, containerd and helm from their Go modules through the module proxy.

Release download sites are unreachable here, the module proxy is not. Each tool gets a
small "tools" module whose go.mod requires the upstream module; binaries land in the cache
keyed by version and are never rebuilt while present.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from openxpu_lab import paths, versions
from openxpu_lab.progress import Progress
from openxpu_lab.shell import LabError, run


@dataclass(frozen=True)
class GoTool:
    """One upstream module and the commands to build from it."""

    name: str
    module: str
    version: str
    go_directive: str
    commands: dict[str, str]  # binary name -> package path
    bin_dir: Path
    ldflags: str = ""
    tags: str = ""
    replaces: dict[str, str] = field(default_factory=dict)  # module -> version or "module version"
    godebug: str = ""

    @property
    def src_dir(self) -> Path:
        return self.bin_dir.parent / "src"

    def missing(self) -> list[str]:
        return [c for c in self.commands if not (self.bin_dir / c).is_file()]


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # The toolchain's usual home, for environments whose PATH does not name it.
    if shutil.which("go") is None and Path("/usr/local/go/bin/go").exists():
        env["PATH"] = f"/usr/local/go/bin:{env.get('PATH', '/usr/bin:/bin')}"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    # Static binaries: nothing to link against on the host, and no C toolchain needed.
    env["CGO_ENABLED"] = "0"
    return env


def _staging_modules(version: str) -> list[str]:
    """The k8s.io/* modules that k8s.io/kubernetes replaces with ./staging/src/... paths."""
    out = run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{version}"], env=_go_env())
    gomod = Path(json.loads(out.stdout)["GoMod"]).read_text()
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", gomod, re.M)))


def kubernetes_tool() -> GoTool:
    v = versions.KUBERNETES
    major, minor = v.lstrip("v").split(".")[:2]
    ld = [
        f"-X k8s.io/{pkg}/version.{key}={val}"
        for pkg in ("component-base", "client-go/pkg")
        for key, val in (("gitVersion", v), ("gitMajor", major), ("gitMinor", minor))
    ]
    ld.append("-X k8s.io/component-base/version.gitTreeState=clean")
    return GoTool(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=v,
        go_directive="1.24.0",
        godebug="go1.24",
        commands={
            c: f"k8s.io/kubernetes/cmd/{c}"
            for c in (*versions.KUBERNETES_COMPONENTS, versions.KUBECTL)
        },
        bin_dir=paths.k8s_bin_dir(),
        ldflags=" ".join(ld),
        tags="providerless",
    )


def containerd_tool() -> GoTool:
    v = versions.CONTAINERD
    return GoTool(
        name="containerd",
        module="github.com/containerd/containerd",
        version=v,
        go_directive="1.25.0",
        commands={
            c: f"github.com/containerd/containerd/cmd/{c}" for c in versions.CONTAINERD_COMMANDS
        },
        bin_dir=paths.containerd_bin_dir(),
        ldflags=f"-X github.com/containerd/containerd/version.Version={v}",
        # btrfs needs cgo and its headers; overlayfs is all the lab uses.
        tags="no_btrfs",
    )


def helm_tool() -> GoTool:
    v = versions.HELM
    return GoTool(
        name="helm",
        module="helm.sh/helm/v3",
        version=v,
        go_directive="1.26.0",
        commands={"helm": "helm.sh/helm/v3/cmd/helm"},
        bin_dir=paths.helm_bin_dir(),
        ldflags=f"-X helm.sh/helm/v3/internal/version.version={v}",
    )


def coredns_tool() -> GoTool:
    v = versions.COREDNS
    return GoTool(
        name="coredns",
        module="github.com/coredns/coredns",
        version=v,
        go_directive="1.26.0",
        commands={"coredns": "github.com/coredns/coredns"},
        bin_dir=paths.coredns_bin_dir(),
    )


def kwok_tool() -> GoTool:
    v = versions.KWOK
    return GoTool(
        name="kwok",
        module="sigs.k8s.io/kwok",
        version=v,
        go_directive="1.24.0",
        commands={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
        bin_dir=paths.kwok_bin_dir(),
        ldflags=f"-X sigs.k8s.io/kwok/pkg/consts.Version={v}",
    )


def prometheus_operator_tool() -> GoTool:
    v = versions.PROMETHEUS_OPERATOR
    module = "github.com/prometheus-operator/prometheus-operator"
    return GoTool(
        name="prometheus-operator",
        module=module,
        version=v,
        go_directive="1.24.0",
        commands={c: f"{module}/cmd/{c}" for c in versions.PROMETHEUS_OPERATOR_COMMANDS},
        bin_dir=paths.prometheus_operator_bin_dir(),
        ldflags=f"-X github.com/prometheus/common/version.Version={v.lstrip('v')}",
    )


def prometheus_tool() -> GoTool:
    return GoTool(
        name="prometheus",
        module="github.com/prometheus/prometheus",
        version=versions.PROMETHEUS_MODULE_VERSION,
        go_directive="1.22.0",
        commands={"prometheus": "github.com/prometheus/prometheus/cmd/prometheus"},
        bin_dir=paths.prometheus_bin_dir(),
        ldflags=f"-X github.com/prometheus/common/version.Version={versions.PROMETHEUS[1:]}",
        # Upstream's own replaces: its main hands klog a go-kit logger.
        replaces={
            "k8s.io/klog": "github.com/simonpasquier/klog-gokit v0.3.0",
            "k8s.io/klog/v2": "github.com/simonpasquier/klog-gokit/v3 v3.3.0",
        },
    )


def _write_module(tool: GoTool) -> None:
    src = tool.src_dir
    src.mkdir(parents=True, exist_ok=True)
    replaces = dict(tool.replaces)
    if tool.module == "k8s.io/kubernetes":
        for mod in _staging_modules(tool.version):
            replaces[mod] = versions.KUBERNETES_STAGING
    lines = [f"module openxpu.io/lab/{tool.name}-tools", "", f"go {tool.go_directive}", ""]
    if tool.godebug:
        # Same runtime defaults as upstream's own main module declares.
        lines += [f"godebug default={tool.godebug}", ""]
    lines += [f"require {tool.module} {tool.version}", ""]
    if replaces:
        lines.append("replace (")
        # "version" pins the module itself; "other/module version" swaps it for another.
        lines += [f"\t{m} => {v if ' ' in v else f'{m} {v}'}" for m, v in sorted(replaces.items())]
        lines += [")", ""]
    gomod = "\n".join(lines)
    stamp = src / "go.mod.in"
    if not (src / "go.sum").exists() or not stamp.exists() or stamp.read_text() != gomod:
        (src / "go.mod").write_text(gomod)
        imports = "\n".join(f'\t_ "{p}"' for p in tool.commands.values())
        (src / "tools.go").write_text(
            f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"
        )
        run(["go", "mod", "tidy"], cwd=src, env=_go_env(), timeout=1800)
        stamp.write_text(gomod)


def ensure(tool: GoTool, progress: Progress, only: tuple[str, ...] = ()) -> dict[str, float]:
    """Build whatever binary of `tool` (or of `only`) is missing; returns seconds per binary."""
    if not [m for m in tool.missing() if not only or m in only]:
        return {}
    # Two processes (the lab and an envtest, two test workers) may want the same cold
    # build: one builds, the other waits and finds it done.
    tool.bin_dir.parent.mkdir(parents=True, exist_ok=True)
    with (tool.bin_dir.parent / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(tool, progress, [m for m in tool.missing() if not only or m in only])


def _build(tool: GoTool, progress: Progress, missing: list[str]) -> dict[str, float]:
    spent: dict[str, float] = {}
    if not missing:
        return spent
    if shutil.which("go", path=_go_env()["PATH"]) is None:
        raise LabError(
            "the Go toolchain (>= 1.24) is needed to build the lab's binaries; none on PATH"
        )
    with progress.step(f"fetching {tool.module}@{tool.version} via the Go module proxy"):
        _write_module(tool)
    tool.bin_dir.mkdir(parents=True, exist_ok=True)
    for name in missing:
        t0 = time.monotonic()
        with progress.step(f"building {name} {tool.version} (cold build, takes minutes)"):
            tmp = tool.bin_dir / f".{name}.tmp"
            argv = ["go", "build", "-trimpath", f"-ldflags=-s -w {tool.ldflags}", "-o", str(tmp)]
            if tool.tags:
                argv.append(f"-tags={tool.tags}")
            run([*argv, tool.commands[name]], cwd=tool.src_dir, env=_go_env(), timeout=3600)
            tmp.rename(tool.bin_dir / name)
        spent[name] = time.monotonic() - t0
    _record_times(tool, spent)
    return spent


def module_source(tool: GoTool) -> Path:
    """The upstream module's source tree in Go's module cache, for the data files it ships."""
    out = run(
        ["go", "mod", "download", "-json", f"{tool.module}@{tool.version}"],
        env=_go_env(),
        timeout=600,
    )
    return Path(json.loads(out.stdout)["Dir"])


def kubectl_path(progress: Progress | None = None) -> Path:
    """The machine's kubectl if it has one, else one built at the lab's version."""
    found = shutil.which("kubectl")
    if found:
        return Path(found)
    tool = kubernetes_tool()
    ensure(tool, progress or Progress(quiet=True), only=(versions.KUBECTL,))
    return tool.bin_dir / versions.KUBECTL


def _record_times(tool: GoTool, spent: dict[str, float]) -> None:
    """Keep cold build figures next to the binaries so `up` can report them later."""
    f = tool.bin_dir.parent / "build-times.json"
    data: dict[str, float] = json.loads(f.read_text()) if f.exists() else {}
    data.update({k: round(v, 1) for k, v in spent.items()})
    f.write_text(json.dumps(data, indent=1, sort_keys=True))


def recorded_build_seconds() -> float:
    """Cold build time of what `up` needs (Kubernetes, containerd), as recorded."""
    total = 0.0
    for tool in (kubernetes_tool(), containerd_tool(), coredns_tool()):
        f = tool.bin_dir.parent / "build-times.json"
        if f.exists():
            total += sum(json.loads(f.read_text()).values())
    return total
