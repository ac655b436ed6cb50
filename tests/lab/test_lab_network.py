"""Which iptables chains are the lab's: by the names its kube-proxy and kubelet use, or by
the network name CNI writes into its rules, and never one that was there before `up`."""

from __future__ import annotations

import shlex

import pytest

from openxpu_lab import network

pytestmark = pytest.mark.unit

RULES = [
    shlex.split(line)
    for line in """-P OUTPUT ACCEPT
-N KUBE-SERVICES
-N KUBE-SVC-NPX46M4PTMTKRN6Y
-N KUBE-FOREIGN-1
-N CNI-DN-ours
-N CNI-DN-theirs
-N CNI-HOSTPORT-DNAT
-A OUTPUT -j KUBE-SERVICES
-A CNI-DN-ours -p tcp -m comment --comment "dnat name: \\"openxpu-lab\\" id: \\"abc\\"" -j DNAT
-A CNI-DN-theirs -p tcp -m comment --comment "dnat name: \\"k8s-pod-network\\" id: \\"d\\"" -j DNAT
""".splitlines()
]


def test_lab_chains_are_told_apart_from_foreign_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "_rules", lambda tool, table: RULES)
    there_before_up = frozenset({"iptables nat KUBE-SVC-NPX46M4PTMTKRN6Y"})
    ours, _ = network._lab_chains("iptables", "nat", there_before_up)
    assert ours == ["KUBE-SERVICES", "CNI-DN-ours", "CNI-HOSTPORT-DNAT"]
