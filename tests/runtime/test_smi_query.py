"""xpu-smi's nvidia-smi query interface against a real xpud.

Expected shapes are written from NVIDIA's documentation of nvidia-smi (`nvidia-smi
--help-query-gpu`, `--help-query-compute-apps`, the man page's dmon / pmon / topo sections)
and output NVIDIA publishes in it, never from xpu-smi's own output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from openxpu_runtime import api
from openxpu_runtime.testing import XpudProcess

pytestmark = pytest.mark.integration
GIB = 1 << 30
MIB = 1 << 20
SCRIPT = Path(sys.executable).parent / "xpu-smi"

# nvidia-smi's value shapes, field by field (help-query-gpu and its published examples:
# "81559 MiB", "0 %", "68.21 W", "405 MHz", "00000000:1B:00.0", "0x0000000000000004", "P8").
MIB_VALUE = r"\d+ MiB"
PERCENT = r"\d+ %"
WATTS = r"\d+\.\d\d W"
MHZ = r"\d+ MHz"
ACTIVE = r"Active|Not Active|\[N/A\]"
ENABLED = r"Enabled|Disabled"
NOT_SUPPORTED = r"\[N/A\]|\[Not Supported\]"
DOCUMENTED: dict[str, tuple[str, str]] = {  # field: (header, value)
    "timestamp": ("timestamp", r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{3}"),
    "driver_version": ("driver_version", r"[0-9][0-9A-Za-z.+-]*"),
    "count": ("count", r"\d+"),
    "name": ("name", r"\S.*"),
    "gpu_name": ("name", r"\S.*"),
    "serial": ("serial", r"\d{13}"),
    "uuid": ("uuid", r"[A-Z]+-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"),
    "pci.bus_id": ("pci.bus_id", r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]"),
    "gpu_bus_id": ("pci.bus_id", r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]"),
    "pci.domain": ("pci.domain", r"0x[0-9A-F]{4}"),
    "pci.bus": ("pci.bus", r"0x[0-9A-F]{2}"),
    "pci.device": ("pci.device", r"0x[0-9A-F]{2}"),
    "pci.device_id": ("pci.device_id", r"0x[0-9A-F]{8}"),
    "pci.sub_device_id": ("pci.sub_device_id", r"0x[0-9A-F]{8}"),
    "index": ("index", r"\d+"),
    "display_mode": ("display_mode", ENABLED),
    "persistence_mode": ("persistence_mode", ENABLED),
    "fan.speed": ("fan.speed [%]", rf"{PERCENT}|{NOT_SUPPORTED}"),
    "pstate": ("pstate", r"P(\d|1[0-2])"),
    "clocks_event_reasons.supported": ("clocks_event_reasons.supported", r"0x[0-9A-F]{16}"),
    "clocks_throttle_reasons.active": ("clocks_event_reasons.active", r"0x[0-9A-F]{16}"),
    "clocks_throttle_reasons.gpu_idle": ("clocks_event_reasons.gpu_idle", ACTIVE),
    "clocks_event_reasons.sw_power_cap": ("clocks_event_reasons.sw_power_cap", ACTIVE),
    "clocks_event_reasons.hw_slowdown": ("clocks_event_reasons.hw_slowdown", ACTIVE),
    "clocks_event_reasons.hw_thermal_slowdown": (
        "clocks_event_reasons.hw_thermal_slowdown",
        ACTIVE,
    ),
    "memory.total": ("memory.total [MiB]", MIB_VALUE),
    "memory.reserved": ("memory.reserved [MiB]", MIB_VALUE),
    "memory.used": ("memory.used [MiB]", MIB_VALUE),
    "memory.free": ("memory.free [MiB]", MIB_VALUE),
    "compute_mode": ("compute_mode", r"Default|Exclusive_Thread|Prohibited|Exclusive_Process"),
    "utilization.gpu": ("utilization.gpu [%]", PERCENT),
    "utilization.memory": ("utilization.memory [%]", PERCENT),
    "ecc.mode.current": ("ecc.mode.current", ENABLED),
    "ecc.mode.pending": ("ecc.mode.pending", ENABLED),
    "ecc.errors.corrected.volatile.total": ("ecc.errors.corrected.volatile.total", r"\d+"),
    "ecc.errors.uncorrected.volatile.total": ("ecc.errors.uncorrected.volatile.total", r"\d+"),
    "ecc.errors.uncorrected.aggregate.dram": ("ecc.errors.uncorrected.aggregate.dram", r"\d+"),
    "temperature.gpu": ("temperature.gpu", r"\d+"),
    "power.draw": ("power.draw [W]", WATTS),
    "power.limit": ("power.limit [W]", WATTS),
    "enforced.power.limit": ("enforced.power.limit [W]", WATTS),
    "power.default_limit": ("power.default_limit [W]", WATTS),
    "clocks.gr": ("clocks.current.graphics [MHz]", MHZ),
    "clocks.current.sm": ("clocks.current.sm [MHz]", MHZ),
    "clocks.mem": ("clocks.current.memory [MHz]", MHZ),
    "clocks.max.graphics": ("clocks.max.graphics [MHz]", MHZ),
    "clocks.max.sm": ("clocks.max.sm [MHz]", MHZ),
    "clocks.max.mem": ("clocks.max.memory [MHz]", MHZ),
    "clocks.applications.graphics": ("clocks.applications.graphics [MHz]", MHZ),
    "mig.mode.current": ("mig.mode.current", NOT_SUPPORTED),
    "vbios_version": ("vbios_version", NOT_SUPPORTED),
}


@pytest.fixture
def xpud8(short_root: Path) -> Iterator[XpudProcess]:
    """x1-8 (two link groups, two NUMA nodes) on the manual clock: readings hold still."""
    proc = XpudProcess(short_root, "--profile", "x1-8", "--clock", "manual", "--seed", "3").start()
    yield proc
    proc.stop()


def smi(
    socket: Path, *args: str, argv0: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [str(argv0)] if argv0 else [sys.executable, "-m", "openxpu_runtime.smi"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XPUD_SOCKET": str(socket), **(env or {})},
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def load(xpud: XpudProcess) -> None:
    """3 GiB and work on device 2, 1 GiB on device 5."""
    with xpud.client() as client:
        ctx = client.open_context(
            api.ContextRequest(pid=os.getpid(), name="smi-load", devices=["2", "5"])
        )
        client.allocate(ctx.id, "2", 3 * GIB)
        client.allocate(ctx.id, "5", 1 * GIB)
        client.launch(ctx.id, "2", ops=1e16)
        client.advance_clock(60)


def test_every_field_has_nvidia_smis_header_and_value_shape(xpud8: XpudProcess) -> None:
    load(xpud8)
    fields = list(DOCUMENTED)
    lines = ok(smi(xpud8.socket, f"--query-gpu={','.join(fields)}", "--format=csv"))
    assert lines[0] == ", ".join(header for header, _ in DOCUMENTED.values())
    assert len(lines) == 1 + 8
    for line in lines[1:]:
        values = line.split(", ")
        assert len(values) == len(fields), line
        for field, value in zip(fields, values, strict=True):
            assert re.fullmatch(DOCUMENTED[field][1], value), (field, value)
    # nounits: the header loses its "[unit]", the values their unit and nothing else.
    bare = ok(smi(xpud8.socket, f"--query-gpu={','.join(fields)}", "--format=csv,nounits"))
    unit = re.compile(r" \[(MiB|%|W|MHz)\]$")
    assert bare[0] == ", ".join(unit.sub("", header) for header, _ in DOCUMENTED.values())
    for with_units, without in zip(lines[1:], bare[1:], strict=True):
        for field, a, b in zip(fields, with_units.split(", "), without.split(", "), strict=True):
            if field != "timestamp":
                assert re.sub(r" (MiB|%|W|MHz)$", "", a) == b, field


def test_documented_queries_print_documented_headers(xpud8: XpudProcess) -> None:
    """Headers NVIDIA's documentation shows for these exact queries."""
    query = (
        "index,name,uuid,pci.bus_id,driver_version,memory.total,memory.used,"
        "utilization.gpu,utilization.memory,temperature.gpu,power.draw,power.limit"
    )
    assert ok(smi(xpud8.socket, f"--query-gpu={query}", "--format=csv"))[0] == (
        "index, name, uuid, pci.bus_id, driver_version, memory.total [MiB], "
        "memory.used [MiB], utilization.gpu [%], utilization.memory [%], temperature.gpu, "
        "power.draw [W], power.limit [W]"
    )
    legacy = "clocks_throttle_reasons.active,clocks_throttle_reasons.sw_power_cap"
    assert ok(smi(xpud8.socket, f"--query-gpu={legacy}", "--format=csv"))[0] == (
        "clocks_event_reasons.active, clocks_event_reasons.sw_power_cap"
    )
    apps = "--query-compute-apps=pid,process_name,used_memory"
    assert ok(smi(xpud8.socket, apps, "--format=csv")) == [
        "pid, process_name, used_gpu_memory [MiB]"  # no process: the header alone
    ]
    assert ok(smi(xpud8.socket, "--query-compute-apps=name,pid", "--format=csv")) == [
        "process_name, pid"
    ]
    # noheader / nounits as in NVIDIA's examples: "9 %, 33, 81920 MiB" and "0, 33, 81920".
    four = "--query-gpu=utilization.gpu,temperature.gpu,memory.total,memory.used"
    [row, *_] = ok(smi(xpud8.socket, four, "--format=csv,noheader"))
    assert re.fullmatch(r"\d+ %, \d+, \d+ MiB, \d+ MiB", row)
    [row, *_] = ok(smi(xpud8.socket, four, "--format=csv,noheader,nounits"))
    assert re.fullmatch(r"\d+, \d+, \d+, \d+", row)
    # A loop prints the header once, then every round's rows (nvidia-smi -l).
    looped = ok(
        smi(xpud8.socket, "--query-gpu=index", "--format=csv", "-l", "0.05", "--iterations", "3")
    )
    assert looped == ["index", *[str(i) for i in range(8)] * 3]


def test_values_are_xpuds_readings_in_nvidia_smis_units(xpud8: XpudProcess) -> None:
    load(xpud8)
    with xpud8.client() as client:
        client.inject_fault(api.FaultRequest(device="1", code=63))
        telemetry = {d.index: d for d in client.telemetry().devices}
    query = (
        "index,memory.used,memory.total,utilization.gpu,pstate,clocks_event_reasons.gpu_idle,"
        "ecc.errors.corrected.volatile.total,power.limit"
    )
    rows = ok(smi(xpud8.socket, f"--query-gpu={query}", "--format=csv,noheader,nounits"))
    seen = {int(r.split(", ")[0]): r.split(", ")[1:] for r in rows}
    assert seen[2][:5] == ["3072", "65536", "100", "P0", "Not Active"]
    assert seen[5][0] == "1024" and seen[0][:5] == ["0", "65536", "0", "P8", "Active"]
    assert seen[1][5] == "1" and seen[0][5] == "0"
    for index, values in seen.items():
        assert int(values[0]) == telemetry[index].memory_used_bytes // MIB
        assert values[6] == f"{telemetry[index].power_limit_watts:.2f}"
    apps = ok(
        smi(
            xpud8.socket,
            "--query-compute-apps=pid,process_name,gpu_uuid,used_memory",
            "--format=csv,noheader",
        )
    )
    assert apps == [
        f"{os.getpid()}, smi-load, {telemetry[2].uuid}, 3072 MiB",
        f"{os.getpid()}, smi-load, {telemetry[5].uuid}, 1024 MiB",
    ]


def test_a_lost_device_reads_gpu_is_lost_but_keeps_its_identity(xpud8: XpudProcess) -> None:
    with xpud8.client() as client:
        client.inject_fault(api.FaultRequest(device="3", code=79))
        uuid = client.inventory().devices[3].uuid
    query = "index,uuid,temperature.gpu,memory.used,power.draw,fan.speed"
    [row] = ok(smi(xpud8.socket, "-i", "3", f"--query-gpu={query}", "--format=csv,noheader"))
    assert row == f"3, {uuid}, [GPU is lost], [GPU is lost], [GPU is lost], [N/A]"
    dmon = ok(smi(xpud8.socket, "dmon", "-c", "1", "-i", "3"))
    assert dmon[2].split() == ["3", *["-"] * 11]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--query-gpu=index,bogus", "--format=csv"],
            'Field "bogus" is not a valid field to query.',
        ),
        (
            ["--query-compute-apps=pid,power.draw", "--format=csv"],
            'Field "power.draw" is not a valid field to query.',
        ),
        (["--query-gpu=index"], '"--format" is required'),
        (["--query-gpu=index", "--format=xml"], '"xml" is not a valid format option'),
        (["-i", "9", "-L"], "no such device: 9"),
        (["-i", "0,,1", "-L"], "empty device id"),
        (["dmon", "-s", "x"], "supported metric groups are p, u, c, m"),
    ],
)
def test_bad_queries_fail_in_one_line_with_exit_2(
    xpud8: XpudProcess, argv: list[str], message: str
) -> None:
    done = smi(xpud8.socket, *argv)
    assert done.returncode == 2, done.stdout
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert message in line


def test_device_selection_takes_every_form_and_never_drops_one(xpud8: XpudProcess) -> None:
    with xpud8.client() as client:
        uuid6 = client.inventory().devices[6].uuid
    serial4 = ok(smi(xpud8.socket, "-i", "4", "--query-gpu=serial", "--format=csv,noheader"))[0]
    query = ("--query-gpu=index", "--format=csv,noheader")
    # A comma list and repeated -i, by index, UUID, bus id (either form) and serial.
    chosen = ok(smi(xpud8.socket, "-i", f"0,{uuid6}", "-i", "0000:01:05.0", "-i", serial4, *query))
    assert chosen == ["0", "4", "5", "6"]
    assert ok(smi(xpud8.socket, "-i", "00000000:01:01.0", "-L")) == [
        line for line in ok(smi(xpud8.socket, "-L")) if line.startswith("GPU 1:")
    ]
    # On subcommands too, added to a selection made before them.
    assert len(ok(smi(xpud8.socket, "-i", "1", "dmon", "-c", "1", "-i", "2,3"))) == 2 + 3
    assert len(ok(smi(xpud8.socket, "topo", "-m", "-i", "0,7"))) == 3 + 10


def test_clear_fault_clears_every_device_named(xpud8: XpudProcess) -> None:
    """`clear-fault -i 0 -i 1 -i 5` used to clear device 5 alone (argparse kept the last)."""
    for index in ("0", "1", "5"):
        ok(smi(xpud8.socket, "inject-fault", "-i", index, "--code", "48"))
    done = ok(smi(xpud8.socket, "clear-fault", "-i", "0", "-i", "1", "-i", "5"))
    assert [line.split(":")[0] for line in done] == ["XPU 0", "XPU 1", "XPU 5"]
    with xpud8.client() as client:
        health = {d.index: d.health for d in client.telemetry().devices}
    assert set(health.values()) == {"Healthy"}, health
    ok(smi(xpud8.socket, "inject-fault", "-i", "2,3", "--code", "48"))
    with xpud8.client() as client:
        unhealthy = [d.index for d in client.telemetry().devices if d.health != "Healthy"]
    assert unhealthy == [2, 3]
    refused = smi(xpud8.socket, "clear-fault")
    assert refused.returncode == 2 and "needs -i" in refused.stderr


def test_list_gpus_has_nvidia_smis_shape(xpud8: XpudProcess) -> None:
    lines = ok(smi(xpud8.socket, "-L"))
    with xpud8.client() as client:
        inventory = client.inventory().devices
    assert len(lines) == 8
    for line, d in zip(lines, inventory, strict=True):
        # NVIDIA's: "GPU 0: NVIDIA A10G (UUID: GPU-4aa494b9-9659-a279-8cc5-12c1c9fbf439)"
        match = re.fullmatch(r"GPU (\d+): (.+) \(UUID: (\S+)\)", line)
        assert match and match.groups() == (str(d.index), d.product, d.uuid)


def test_topo_matrix_follows_link_groups_with_nvidia_smis_legend(xpud8: XpudProcess) -> None:
    lines = ok(smi(xpud8.socket, "topo", "-m"))
    gpus = [f"GPU{i}" for i in range(8)]
    assert lines[0] == "\t" + "\t".join([*gpus, "CPU Affinity", "NUMA Affinity", "GPU NUMA ID"])
    for i, line in enumerate(lines[1:9]):
        cells = line.split("\t")
        assert cells[0] == f"GPU{i}" and len(cells) == 1 + 8 + 3
        for j, cell in enumerate(cells[1:9]):
            # x1-8: link groups 0-3 and 4-7, each its own NUMA node.
            expected = "X" if i == j else "PIX" if i // 4 == j // 4 else "SYS"
            assert cell.strip() == expected
        assert re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", cells[9])
        assert cells[10] == str(i // 4) and cells[11] == "N/A"
    legend = lines[9:]
    assert legend[:3] == ["", "Legend:", ""]
    for mark in ("X    = Self", "SYS  = ", "NODE = ", "PHB  = ", "PXB  = ", "PIX  = ", "NV#  = "):
        assert any(line.startswith(f"  {mark}") for line in legend), mark


def right_edges(line: str) -> list[int]:
    return [m.end() for m in re.finditer(r"\S+", line)]


def test_dmon_and_pmon_print_nvidia_smis_columns(xpud8: XpudProcess) -> None:
    load(xpud8)
    dmon = ok(smi(xpud8.socket, "dmon", "-c", "2", "-d", "0.1", "-i", "0,2"))
    # The header of nvidia-smi dmon as NVIDIA's documentation shows it (driver 535 and on).
    assert dmon[:2] == [
        "# gpu    pwr  gtemp  mtemp     sm    mem    enc    dec    jpg    ofa   mclk   pclk",
        "# Idx      W      C      C      %      %      %      %      %      %    MHz    MHz",
    ]
    assert [r.split()[0] for r in dmon[2:]] == ["0", "2", "0", "2"]
    for row in dmon[2:]:
        assert right_edges(row) == right_edges(dmon[0])[1:]  # numbers under their names
    busy = dmon[3].split()
    assert busy[4] == "100" and busy[11] == "1800" and busy[10] == "1600"
    memory = ok(smi(xpud8.socket, "dmon", "-c", "1", "-s", "m", "-i", "2"))
    assert memory[0].split() == ["#", "gpu", "fb", "bar1", "ccpm"]
    assert memory[2].split() == ["2", "3072", "0", "0"]

    pmon = ok(smi(xpud8.socket, "pmon", "-c", "1", "-i", "0,2"))
    assert pmon[:2] == [
        "# gpu         pid   type     sm    mem    enc    dec    jpg    ofa    command",
        "# Idx           #    C/G      %      %      %      %      %      %    name",
    ]
    # NVIDIA's rows: "    0    2354247     C      -      -      -      -      -      -    name"
    assert pmon[2] == "    0          -     -      -      -      -      -      -      -    -"
    assert pmon[3] == f"    2{os.getpid():>11}     C" + "      -" * 6 + "    smi-load"
    with_memory = ok(smi(xpud8.socket, "pmon", "-c", "1", "-s", "um", "-i", "2"))
    assert with_memory[0].split()[-3:] == ["fb", "ccpm", "command"]
    assert with_memory[2].split()[-3:] == ["3072", "0", "smi-load"]


def test_a_bash_script_written_for_nvidia_smi_runs_unchanged(
    xpud8: XpudProcess, tmp_path: Path
) -> None:
    """The opt-in name: a link called nvidia-smi to the xpu-smi script."""
    load(xpud8)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").symlink_to(SCRIPT)
    script = """
set -eu
busy=""
while IFS=', ' read -r index used; do
    if [ "$used" -gt 1000 ]; then busy="$busy $index:$used"; fi
done < <(nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits)
echo "busy:$busy"
nvidia-smi -L | wc -l
"""
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "XPUD_SOCKET": str(xpud8.socket),
    }
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["busy: 2:3072 5:1024", "8"]
    # nvidia-smi's own words where scripts look for them.
    xpud8.stop()
    for argv0, env_name in ((bin_dir / "nvidia-smi", None), (SCRIPT, "nvidia-smi")):
        down = smi(
            xpud8.socket, "-L", argv0=argv0, env={"XPU_SMI_NAME": env_name} if env_name else None
        )
        assert down.returncode == 9
        [line] = down.stderr.splitlines()
        assert line.startswith(
            "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
        )
    assert "xpu-smi has failed" in smi(xpud8.socket, "-L", argv0=SCRIPT).stderr


def test_queries_import_no_http_or_validation_library(xpud8: XpudProcess) -> None:
    """Queries run in scripts' loops: they keep to the standard-library reader."""
    probe = (
        "import sys\n"
        "from openxpu_runtime.smi import main\n"
        "for argv in (['--query-gpu=index,memory.used,power.draw', '--format=csv'],\n"
        "             ['--query-compute-apps=pid,used_memory', '--format=csv'], ['-L'],\n"
        "             ['topo', '-m'], ['dmon', '-c', '1'], ['pmon', '-c', '1']):\n"
        "    assert main(argv) == 0, argv\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'httpx', 'pydantic', 'rich'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "XPUD_SOCKET": str(xpud8.socket)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stderr, done.stderr


def test_processes_and_events_keep_to_the_selection(xpud8: XpudProcess) -> None:
    with xpud8.client() as client:
        ctx = client.open_context(api.ContextRequest(pid=4242, name="two", devices=["3", "4"]))
        client.allocate(ctx.id, "3", 5 * MIB)
        client.open_context(api.ContextRequest(pid=4343, name="other", devices=["6"]))
    [only] = json.loads(ok(smi(xpud8.socket, "--json", "processes", "-i", "3"))[0])
    assert only["pid"] == 4242 and [d["index"] for d in only["devices"]] == [3]
    table = "\n".join(ok(smi(xpud8.socket, "processes", "-i", "3,4")))
    assert "4242" in table and "4343" not in table

    events = subprocess.Popen(
        [sys.executable, "-m", "openxpu_runtime.smi", "events", "-i", "1,2"],
        env={**os.environ, "XPUD_SOCKET": str(xpud8.socket)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert events.stdout is not None
    try:
        snapshot = [json.loads(events.stdout.readline()) for _ in range(2)]
        assert [e["device_index"] for e in snapshot] == [1, 2]
        with xpud8.client() as client:
            client.inject_fault(api.FaultRequest(device="0", code=48))
            client.inject_fault(api.FaultRequest(device="2", code=48))
        seen = [json.loads(events.stdout.readline()) for _ in range(2)]
        assert {e["device_index"] for e in seen} == {2}, seen
    finally:
        events.kill()
        events.communicate()
