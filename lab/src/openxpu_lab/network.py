"""Host networking the lab owns: its bridges, two sysctls, its guard rules.

Everything here is tagged or named so `down` removes exactly what `up` made; of the chains
kube-proxy, the kubelet and CNI make, `down` removes those that were not on the host before
the lab came up and that carry a name or tag of the lab's components.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from openxpu_lab.settings import (
    APISERVER_PORT,
    BRIDGE,
    CNI_NETWORK,
    HOST_LINK,
    NODE_IP,
    NODE_NETWORK,
    POD_CIDR,
    WORKER_LINK_PREFIX,
)
from openxpu_lab.shell import ok, run

_COMMENT = "openxpu-lab"
# Pods (of the host's node on oxlab0, of worker nodes through their veths on oxlab-host)
# may reach each other, the nodes and this host (the API server, kubelet), nothing beyond.
_FORWARD_CHAIN = "OXLAB-FORWARD"
_FORWARD_JUMPS = [
    ["FORWARD", "-i", link, "-m", "comment", "--comment", _COMMENT, "-j", _FORWARD_CHAIN]
    for link in (BRIDGE, HOST_LINK)
]
_FORWARD_RULES = [
    ["-d", POD_CIDR, "-j", "RETURN"],
    ["-d", NODE_NETWORK, "-j", "RETURN"],
    ["-j", "DROP"],
]


# Only the host's own interfaces may not reach the lab's addresses: the lab node address
# and the API server port answer to this host (lo) and the pods (oxlab0) alone. Linux
# would otherwise accept packets for 10.87.0.1 arriving on any NIC.
_INPUT_CHAIN = "OXLAB-INPUT"
_INPUT_JUMP = ["INPUT", "-m", "comment", "--comment", _COMMENT, "-j", _INPUT_CHAIN]
_INPUT_RULES = [
    ["-i", "lo", "-j", "RETURN"],
    ["-i", BRIDGE, "-j", "RETURN"],
    # Worker nodes' veths are ports of this bridge.
    ["-i", HOST_LINK, "-j", "RETURN"],
    ["-d", f"{NODE_IP}/32", "-j", "DROP"],
    ["-p", "tcp", "--dport", str(APISERVER_PORT), "-j", "DROP"],
]
# kube-apiserver binds the node address alone; host clients dial loopback (settings.py).
_LOOPBACK_DNAT = [
    "OUTPUT",
    "-d",
    "127.0.0.1/32",
    "-p",
    "tcp",
    "--dport",
    str(APISERVER_PORT),
    "-m",
    "comment",
    "--comment",
    _COMMENT,
    "-j",
    "DNAT",
    "--to-destination",
    f"{NODE_IP}:{APISERVER_PORT}",
]
_OWN_CHAINS = (_FORWARD_CHAIN, _INPUT_CHAIN)
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


def _ensure_chain(chain: str, rules: list[list[str]], jumps: list[list[str]]) -> None:
    if not ok(["iptables", "-n", "-L", chain]):
        run(["iptables", "-N", chain])
        for rule in rules:
            run(["iptables", "-A", chain, *rule])
    for jump in jumps:
        if not ok(["iptables", "-C", *jump]):
            run(["iptables", "-I", *jump])


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
    _ensure_chain(_FORWARD_CHAIN, _FORWARD_RULES, _FORWARD_JUMPS)
    _ensure_chain(_INPUT_CHAIN, _INPUT_RULES, [_INPUT_JUMP])
    if not ok(["iptables", "-t", "nat", "-C", *_LOOPBACK_DNAT]):
        run(["iptables", "-t", "nat", "-I", *_LOOPBACK_DNAT])


_TOOLS = ("iptables", "ip6tables")  # kube-proxy and the kubelet program both families
_TABLES = ("filter", "nat", "mangle")

# Chains the lab's kubelet and kube-proxy make: fixed names and per-service/endpoint hashes.
_KUBE_CHAINS = frozenset(
    {
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
        "KUBE-MARK-DROP",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
        "KUBE-FIREWALL",
        "KUBE-PROXY-CANARY",
        "KUBE-KUBELET-CANARY",
        "KUBE-IPTABLES-HINT",
    }
)
_KUBE_HASHED = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
# portmap's entry chains, shared by every CNI network on the host that maps host ports.
_PORTMAP_SHARED = "CNI-HOSTPORT-"


def _rules(tool: str, table: str) -> list[list[str]]:
    out = run([tool, "-t", table, "-S"], check=False).stdout
    return [shlex.split(line) for line in out.splitlines()]


def _chain_names(rules: list[list[str]]) -> list[str]:
    return [r[1] for r in rules if r[:1] == ["-N"]]


def chain_ids() -> list[str]:
    """Every KUBE-*/CNI-* chain on the host as "tool table chain"."""
    return [
        f"{tool} {table} {chain}"
        for tool in _TOOLS
        for table in _TABLES
        for chain in _chain_names(_rules(tool, table))
        if chain.startswith(("KUBE-", "CNI-"))
    ]


def _made_by_lab(chain: str, rules: list[list[str]]) -> bool:
    """A chain of the lab's kube-proxy or kubelet by name, or a CNI chain whose rules carry
    the lab's network name (the bridge and portmap plugins tag every rule with it)."""
    if chain in _KUBE_CHAINS or chain.startswith(_KUBE_HASHED):
        return True
    if chain.startswith(_PORTMAP_SHARED):
        return True
    if chain.startswith("CNI-"):
        return any(r[1:2] == [chain] and f'"{CNI_NETWORK}"' in " ".join(r) for r in rules)
    return False


def _lab_chains(
    tool: str, table: str, foreign: frozenset[str]
) -> tuple[list[str], list[list[str]]]:
    rules = _rules(tool, table)
    ours = [
        c
        for c in _chain_names(rules)
        if f"{tool} {table} {c}" not in foreign and _made_by_lab(c, rules)
    ]
    return ours, rules


def _jump_target(rule: list[str]) -> str | None:
    return rule[rule.index("-j") + 1] if "-j" in rule[:-1] else None


def _remove_chains(tool: str, table: str, foreign: frozenset[str]) -> int:
    ours, rules = _lab_chains(tool, table, foreign)
    own = [c for c in ours if not c.startswith(_PORTMAP_SHARED)]
    shared = [c for c in ours if c.startswith(_PORTMAP_SHARED)]
    # Jumps into our chains from chains that stay, then flush, then delete.
    for rule in rules:
        if rule[:1] == ["-A"] and rule[1] not in own and _jump_target(rule) in own:
            run([tool, "-t", table, "-D", *rule[1:]], check=False)
    for ch in own:
        run([tool, "-t", table, "-F", ch], check=False)
    for ch in own:
        run([tool, "-t", table, "-X", ch], check=False)
    removed = len(own)
    # portmap's shared chains go only once nothing but jumps to them is left.
    rules = _rules(tool, table)
    for ch in shared:
        if any(r[:2] == ["-A", ch] for r in rules):
            continue
        for rule in rules:
            if rule[:1] == ["-A"] and _jump_target(rule) == ch:
                run([tool, "-t", table, "-D", *rule[1:]], check=False)
        run([tool, "-t", table, "-X", ch], check=False)
        removed += 1
    return removed


def teardown(state_root: Path, foreign_chains: frozenset[str]) -> list[str]:
    """Undo setup plus the chains the lab's kube-proxy, kubelet and CNI made, leaving every
    chain in `foreign_chains` (there before the lab came up) alone. Returns what it did."""
    done: list[str] = []
    for rule in (*_FORWARD_JUMPS, _INPUT_JUMP):
        while ok(["iptables", "-D", *rule]):
            done.append(f"iptables rule {' '.join(rule[:1])} (openxpu-lab)")
    while ok(["iptables", "-t", "nat", "-D", *_LOOPBACK_DNAT]):
        done.append("iptables nat rule OUTPUT (openxpu-lab)")
    for chain in _OWN_CHAINS:
        if ok(["iptables", "-n", "-L", chain]):
            run(["iptables", "-F", chain], check=False)
            run(["iptables", "-X", chain], check=False)
            done.append(f"iptables chain {chain}")
    for tool in _TOOLS:
        for table in _TABLES:
            n = _remove_chains(tool, table, foreign_chains)
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
    for bridge in (BRIDGE, HOST_LINK):
        br = Path(f"/sys/class/net/{bridge}/brif")
        if br.exists():
            found += sorted(p.name for p in br.iterdir())
    # A worker's veth, even if detached from the bridge.
    found += sorted(p.name for p in Path("/sys/class/net").glob(f"{WORKER_LINK_PREFIX}*"))
    return sorted(set(found))


def lab_iptables(foreign_chains: frozenset[str]) -> list[str]:
    found = [
        f"{tool} {table} chain {c}"
        for tool in _TOOLS
        for table in _TABLES
        for c in _lab_chains(tool, table, foreign_chains)[0]
    ]
    found += [f"filter FORWARD rule {j[2]}" for j in _FORWARD_JUMPS if ok(["iptables", "-C", *j])]
    if ok(["iptables", "-t", "nat", "-C", *_LOOPBACK_DNAT]):
        found.append("nat OUTPUT loopback rule")
    found += [f"filter chain {c}" for c in _OWN_CHAINS if ok(["iptables", "-n", "-L", c])]
    return found
