"""Host networking the lab owns: its bridge, sysctls, one FORWARD guard rule.

Everything here is tagged or named so `down` removes exactly what `up` made.
"""

from __future__ import annotations

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


def _sysctl(key: str, value: str) -> None:
    p = Path("/proc/sys") / key.replace(".", "/")
    if p.exists() and p.read_text().strip() != value:
        p.write_text(value)


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def setup() -> None:
    if not link_exists(HOST_LINK):
        run(["ip", "link", "add", HOST_LINK, "type", "bridge"])
    if NODE_IP not in run(["ip", "-4", "-o", "addr", "show", "dev", HOST_LINK]).stdout:
        run(["ip", "addr", "add", f"{NODE_IP}/32", "dev", HOST_LINK])
    run(["ip", "link", "set", HOST_LINK, "up"])
    _sysctl("net.ipv4.ip_forward", "1")
    # Service traffic between pods on the same bridge must pass kube-proxy's iptables rules.
    _sysctl("net.bridge.bridge-nf-call-iptables", "1")
    if not ok(["iptables", "-C", *_GUARD]):
        run(["iptables", "-I", *_GUARD])


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


def teardown() -> list[str]:
    """Undo setup plus the chains kube-proxy, the kubelet and CNI made. Returns what it did."""
    done: list[str] = []
    while ok(["iptables", "-D", *_GUARD]):
        done.append("iptables guard rule")
    for tool in _TOOLS:
        for table in ("filter", "nat", "mangle"):
            n = _remove_chains(tool, table)
            if n:
                done.append(f"{tool} {table}: {n} chains")
    for link in (BRIDGE, HOST_LINK):
        if link_exists(link):
            run(["ip", "link", "del", link], check=False)
            done.append(f"link {link}")
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
    return found
