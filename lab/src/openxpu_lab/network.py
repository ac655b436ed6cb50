"""Host networking the lab owns: its bridges, two sysctls, its guard rules.

Everything here is tagged or named so `down` removes exactly what `up` made.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from openxpu_lab.settings import BRIDGE, HOST_LINK, NODE_IP
from openxpu_lab.shell import ok, run

_COMMENT = "openxpu-lab"
# Pods may reach each other and this host (the API server, kubelet), nothing beyond it.
_GUARD = [
    "FORWARD",
    "-i",
    BRIDGE,
    "!",
    "-o",
    BRIDGE,
    "-m",
    "comment",
    "--comment",
    _COMMENT,
    "-j",
    "DROP",
]


# Only the host's own interfaces may not reach the lab's addresses: the lab node address
# and the API server port answer to this host (lo) and the pods (oxlab0) alone. Linux
# would otherwise accept packets for 10.87.0.1 arriving on any NIC.
_INPUT_CHAIN = "OXLAB-INPUT"
_INPUT_JUMP = ["INPUT", "-m", "comment", "--comment", _COMMENT, "-j", _INPUT_CHAIN]
_INPUT_RULES = [
    ["-i", "lo", "-j", "RETURN"],
    ["-i", BRIDGE, "-j", "RETURN"],
    ["-d", f"{NODE_IP}/32", "-j", "DROP"],
    ["-p", "tcp", "--dport", "6443", "-j", "DROP"],
]
_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"}


def _sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def _set_sysctls(saved: Path) -> None:
    """Set what the lab needs, remembering the host's values once so `down` restores them."""
    before: dict[str, str] = json.loads(saved.read_text()) if saved.exists() else {}
    for key, value in _SYSCTLS.items():
        p = _sysctl_path(key)
        if not p.exists():
            continue
        current = p.read_text().strip()
        if current != value:
            before.setdefault(key, current)
            p.write_text(value)
    saved.write_text(json.dumps(before))


def _restore_sysctls(saved: Path) -> list[str]:
    if not saved.exists():
        return []
    done = []
    for key, value in json.loads(saved.read_text()).items():
        p = _sysctl_path(key)
        if p.exists():
            p.write_text(value)
            done.append(f"sysctl {key}={value} restored")
    saved.unlink()
    return done


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def setup(state_root: Path) -> None:
    if not link_exists(HOST_LINK):
        run(["ip", "link", "add", HOST_LINK, "type", "bridge"])
    if NODE_IP not in run(["ip", "-4", "-o", "addr", "show", "dev", HOST_LINK]).stdout:
        run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", HOST_LINK])
    run(["ip", "link", "set", HOST_LINK, "up"])
    # Forwarding for pod traffic; bridged pod-to-pod service traffic must pass kube-proxy's
    # iptables rules.
    _set_sysctls(state_root / "host-sysctls.json")
    if not ok(["iptables", "-C", *_GUARD]):
        run(["iptables", "-I", *_GUARD])
    if not ok(["iptables", "-n", "-L", _INPUT_CHAIN]):
        run(["iptables", "-N", _INPUT_CHAIN])
        for rule in _INPUT_RULES:
            run(["iptables", "-A", _INPUT_CHAIN, *rule])
    if not ok(["iptables", "-C", *_INPUT_JUMP]):
        run(["iptables", "-I", *_INPUT_JUMP])


_TOOLS = ("iptables", "ip6tables")  # kube-proxy and the kubelet program both families
_PREFIXES = ("KUBE-", "CNI-")


def _chains(tool: str, table: str) -> list[str]:
    out = run([tool, "-t", table, "-S"], check=False).stdout
    return [
        line.split()[1]
        for line in out.splitlines()
        if line.startswith("-N ") and line.split()[1].startswith(_PREFIXES)
    ]


def _remove_chains(tool: str, table: str) -> int:
    chains = _chains(tool, table)
    if not chains:
        return 0
    # Jumps from the built-in chains first, then flush, then delete.
    for rule in run([tool, "-t", table, "-S"], check=False).stdout.splitlines():
        parts = shlex.split(rule)
        if (
            parts[:1] == ["-A"]
            and "-j" in parts
            and parts[1] not in chains
            and parts[parts.index("-j") + 1] in chains
        ):
            run([tool, "-t", table, "-D", *parts[1:]], check=False)
    for ch in chains:
        run([tool, "-t", table, "-F", ch], check=False)
    for ch in chains:
        run([tool, "-t", table, "-X", ch], check=False)
    return len(chains)


def teardown(state_root: Path) -> list[str]:
    """Undo setup plus the chains kube-proxy, the kubelet and CNI made. Returns what it did."""
    done: list[str] = []
    while ok(["iptables", "-D", *_GUARD]):
        done.append("iptables guard rule")
    while ok(["iptables", "-D", *_INPUT_JUMP]):
        done.append("iptables INPUT guard")
    if ok(["iptables", "-n", "-L", _INPUT_CHAIN]):
        run(["iptables", "-F", _INPUT_CHAIN], check=False)
        run(["iptables", "-X", _INPUT_CHAIN], check=False)
        done.append(f"iptables chain {_INPUT_CHAIN}")
    for tool in _TOOLS:
        for table in ("filter", "nat", "mangle"):
            n = _remove_chains(tool, table)
            if n:
                done.append(f"{tool} {table}: {n} chains")
    for link in (BRIDGE, HOST_LINK):
        if link_exists(link):
            run(["ip", "link", "del", link], check=False)
            done.append(f"link {link}")
    done += _restore_sysctls(state_root / "host-sysctls.json")
    return done


def lab_links() -> list[str]:
    """The lab's bridges and any pod veth still attached to them."""
    found = [link for link in (BRIDGE, HOST_LINK) if link_exists(link)]
    br = Path(f"/sys/class/net/{BRIDGE}/brif")
    if br.exists():
        found += sorted(p.name for p in br.iterdir())
    return found


def lab_iptables() -> list[str]:
    found = [
        f"{tool} {t} chain {c}"
        for tool in _TOOLS
        for t in ("filter", "nat", "mangle")
        for c in _chains(tool, t)
    ]
    if ok(["iptables", "-C", *_GUARD]):
        found.append("filter FORWARD guard rule")
    if ok(["iptables", "-n", "-L", _INPUT_CHAIN]):
        found.append(f"filter chain {_INPUT_CHAIN}")
    return found
