"""nvidia-smi's `topo -m`, `dmon` and `pmon` layouts for xpud's readings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from openxpu_runtime.errors import XpuError
from openxpu_runtime.smi.query import MIB, Device, half_up

NONE = "-"  # dmon/pmon's mark for a metric with no reading

# dmon's metric groups (`-s`), as nvidia-smi names and measures their columns.
DMON_GROUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "p": (("pwr", "W"), ("gtemp", "C"), ("mtemp", "C")),
    "u": (("sm", "%"), ("mem", "%"), ("enc", "%"), ("dec", "%"), ("jpg", "%"), ("ofa", "%")),
    "c": (("mclk", "MHz"), ("pclk", "MHz")),
    "m": (("fb", "MB"), ("bar1", "MB"), ("ccpm", "MB")),
}
DMON_DEFAULT = "puc"
PMON_GROUPS: dict[str, tuple[tuple[str, str], ...]] = {
    "u": (("sm", "%"), ("mem", "%"), ("enc", "%"), ("dec", "%"), ("jpg", "%"), ("ofa", "%")),
    "m": (("fb", "MB"), ("ccpm", "MB")),
}
PMON_DEFAULT = "u"

TOPO_LEGEND = """
Legend:

  X    = Self
  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)
  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node
  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)
  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)
  PIX  = Connection traversing at most a single PCIe bridge
  NV#  = Connection traversing a bonded set of # NVLinks"""  # noqa: E501


def groups(selection: str, known: dict[str, tuple[tuple[str, str], ...]]) -> list[str]:
    """`-s` letters in the order given (nvidia-smi prints the groups in that order)."""
    unknown = sorted(set(selection) - set(known))
    if unknown or not selection:
        raise XpuError(
            f"-s {selection!r}: supported metric groups are {', '.join(known)}"
            + (f" (not {', '.join(unknown)})" if unknown else "")
        )
    return list(dict.fromkeys(selection))


def dmon_header(letters: Sequence[str]) -> list[str]:
    columns = [c for g in letters for c in DMON_GROUPS[g]]
    return [
        "# gpu" + "".join(name.rjust(7) for name, _ in columns),
        "# Idx" + "".join(unit.rjust(7) for _, unit in columns),
    ]


def _dmon_values(d: Device, group: str) -> list[str]:
    r = d.reading
    if group == "p":
        return [str(half_up(r["power_watts"])), str(half_up(r["temperature_celsius"])), NONE]
    if group == "u":
        # No memory-controller activity (0, as NVML reports) and no media engines.
        return [str(half_up(r["utilization_ratio"] * 100)), "0", NONE, NONE, NONE, NONE]
    if group == "c":
        return [str(r["memory_clock_mhz"]), str(half_up(r["clock_mhz"]))]
    return [str(r["memory_used_bytes"] // MIB), "0", "0"]  # no BAR1 mappings, no protected memory


def dmon_rows(letters: Sequence[str], chosen: Sequence[Device]) -> list[str]:
    rows = []
    for d in chosen:
        width = sum(len(DMON_GROUPS[g]) for g in letters)
        cells = [NONE] * width if d.lost else [v for g in letters for v in _dmon_values(d, g)]
        rows.append(str(d.info["index"]).rjust(5) + "".join(c.rjust(7) for c in cells))
    return rows


def pmon_header(letters: Sequence[str]) -> list[str]:
    columns = [c for g in ("u", "m") if g in letters for c in PMON_GROUPS[g]]
    return [
        "# gpu"
        + "pid".rjust(12)
        + "type".rjust(7)
        + "".join(name.rjust(7) for name, _ in columns)
        + "    command",
        "# Idx"
        + "#".rjust(12)
        + "C/G".rjust(7)
        + "".join(unit.rjust(7) for _, unit in columns)
        + "    name",
    ]


def pmon_rows(letters: Sequence[str], chosen: Sequence[Device]) -> list[str]:
    """xpud keeps no per-process utilization, so those columns read `-`, as nvidia-smi
    shows a process it has no sample for; memory is per process."""

    def row(index: int, pid: str, kind: str, cells: list[str], command: str) -> str:
        return (
            str(index).rjust(5)
            + pid.rjust(11)
            + kind.rjust(6)
            + "".join(c.rjust(7) for c in cells)
            + "    "
            + command
        )

    rows = []
    for d in chosen:
        index = d.info["index"]
        if not d.reading["processes"]:
            empty = [NONE] * sum(len(PMON_GROUPS[g]) for g in letters)
            rows.append(row(index, NONE, NONE, empty, NONE))
        for p in d.reading["processes"]:
            cells: list[str] = []
            if "u" in letters:
                cells += [NONE] * len(PMON_GROUPS["u"])
            if "m" in letters:
                cells += [str(p["memory_used_bytes"] // MIB), "0"]
            rows.append(row(index, str(p["pid"]), "C", cells, str(p["name"])))
    return rows


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        try:
            cpus.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return cpus


def numa_cpus(nodes: int, sysfs: Path = Path("/sys/devices/system")) -> list[list[int]]:
    """CPUs of each emulated NUMA node, as the NVML library computes them (affinity.rs): the
    host's own nodes when it has that many, else the online CPUs split in equal runs."""
    host: list[list[int]] = []
    for n in range(nodes):
        try:
            host.append(_cpu_list((sysfs / f"node/node{n}/cpulist").read_text()))
        except OSError:
            break
    if len(host) == nodes and all(host):
        return host
    try:
        online = _cpu_list((sysfs / "cpu/online").read_text())
    except OSError:
        online = []
    online = online or [0]
    per = max(-(-len(online) // nodes), 1)
    # More emulated nodes than CPUs: a node shares the last CPU rather than none.
    return [online[n * per : (n + 1) * per] or [online[-1]] for n in range(nodes)]


def ranges(cpus: Sequence[int]) -> str:
    """`0-11,24-35`, as nvidia-smi prints an affinity."""
    runs: list[list[int]] = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)


def link(a: Device, b: Device) -> str:
    """Same device X; one link group is one switch (PIX); another group on the same NUMA node
    NODE; else SYS: the levels nvmlDeviceGetTopologyCommonAncestor reports."""
    if a.info["index"] == b.info["index"]:
        return " X "
    if a.info["link_group"] == b.info["link_group"]:
        return "PIX"
    return "NODE" if a.info["numa_node"] == b.info["numa_node"] else "SYS"


def topo_matrix(chosen: Sequence[Device], numa_nodes: int) -> list[str]:
    cpus = numa_cpus(max(numa_nodes, 1))
    names = [f"GPU{d.info['index']}" for d in chosen]
    lines = ["\t" + "\t".join([*names, "CPU Affinity", "NUMA Affinity", "GPU NUMA ID"])]
    for name, a in zip(names, chosen, strict=True):
        node = a.info["numa_node"]
        cells = [link(a, b) for b in chosen]
        lines.append("\t".join([name, *cells, ranges(cpus[node]), str(node), "N/A"]))
    return [*lines, *TOPO_LEGEND.splitlines()]
