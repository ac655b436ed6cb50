"""Policies that must be refused, each with the field the refusal must name.

Shared by the unit tests (the operator's own validation refuses them) and the integration
tests (the real API server refuses them at admission, from the generated CRD's schema and
CEL rules), so the two stay in step.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class BadSpec(NamedTuple):
    id: str
    spec: dict[str, Any]
    # The field as a dotted path; list and map items as `.0` / `.name`.
    field: str


def _pools(*pools: dict[str, Any]) -> dict[str, Any]:
    return {"emulation": {"nodePools": list(pools)}}


def _plugin(**config: Any) -> dict[str, Any]:
    return {"devicePlugin": {"config": config}}


def _slicing(**ts: Any) -> dict[str, Any]:
    return _plugin(sharing={"timeSlicing": ts})


BAD_SPECS: list[BadSpec] = [
    BadSpec(
        "driver version not a version", {"driver": {"version": "latest"}}, "spec.driver.version"
    ),
    BadSpec(
        "driver upgrade maxUnavailable over 100%",
        {"driver": {"upgradePolicy": {"maxUnavailable": "150%"}}},
        "spec.driver.upgradePolicy.maxUnavailable",
    ),
    BadSpec(
        "driver upgrade maxUnavailable negative",
        {"driver": {"upgradePolicy": {"maxUnavailable": -1}}},
        "spec.driver.upgradePolicy.maxUnavailable",
    ),
    BadSpec(
        "maxParallelUpgrades negative",
        {"driver": {"upgradePolicy": {"maxParallelUpgrades": -2}}},
        "spec.driver.upgradePolicy.maxParallelUpgrades",
    ),
    BadSpec(
        "drain timeout negative",
        {"driver": {"upgradePolicy": {"drain": {"timeoutSeconds": -5}}}},
        "spec.driver.upgradePolicy.drain.timeoutSeconds",
    ),
    BadSpec(
        "driver profile names no profile",
        {"driver": {"profile": "x9-1"}},
        "spec.driver.profile",
    ),
    BadSpec(
        "node pool names a missing profile",
        _pools({"name": "big", "nodeSelector": {"pool": "big"}, "profile": "missing"}),
        "spec.emulation.nodePools",
    ),
    BadSpec(
        "node pool with an empty nodeSelector",
        _pools({"name": "all", "nodeSelector": {}, "profile": "x1-8"}),
        "spec.emulation.nodePools.0.nodeSelector",
    ),
    BadSpec(
        "default profile names no profile",
        {"emulation": {"defaultProfile": "nope"}},
        "spec.emulation.defaultProfile",
    ),
    BadSpec(
        "custom profile shadows a built-in name",
        {"emulation": {"profiles": {"x1-8": {"devices": 4}}}},
        "spec.emulation.profiles",
    ),
    BadSpec(
        "custom profile with tdp below idle power",
        {"emulation": {"profiles": {"hot": {"tdpWatts": 50, "idleWatts": 80}}}},
        "spec.emulation.profiles.hot.tdpWatts",
    ),
    BadSpec(
        "custom profile devices not a multiple of link groups",
        {"emulation": {"profiles": {"odd": {"devices": 3, "linkGroups": 2}}}},
        "spec.emulation.profiles.odd.devices",
    ),
    BadSpec(
        "custom profile from an unknown base",
        {"emulation": {"profiles": {"p": {"base": "x9-1"}}}},
        "spec.emulation.profiles.p.base",
    ),
    BadSpec(
        "exporter refreshInterval above 5m",
        {"exporter": {"refreshInterval": "10m"}},
        "spec.exporter.refreshInterval",
    ),
    BadSpec(
        "exporter refreshInterval not a duration",
        {"exporter": {"refreshInterval": "fast"}},
        "spec.exporter.refreshInterval",
    ),
    BadSpec(
        "serviceMonitor interval below 1s",
        {"exporter": {"serviceMonitor": {"interval": "0s"}}},
        "spec.exporter.serviceMonitor.interval",
    ),
    BadSpec("exporter port 0", {"exporter": {"port": 0}}, "spec.exporter.port"),
    BadSpec(
        "renamed shared resource with one replica",
        _slicing(replicas=1, renameByDefault=True),
        "spec.devicePlugin.config.sharing.timeSlicing.replicas",
    ),
    BadSpec(
        "zero time-slicing replicas",
        _slicing(replicas=0),
        "spec.devicePlugin.config.sharing.timeSlicing.replicas",
    ),
    BadSpec(
        "memoryPerReplica not a quantity",
        _slicing(replicas=2, memoryPerReplica="lots"),
        "spec.devicePlugin.config.sharing.timeSlicing.memoryPerReplica",
    ),
    BadSpec(
        "memoryPerReplica zero (the plugin refuses it)",
        _slicing(replicas=2, memoryPerReplica="0Gi"),
        "spec.devicePlugin.config.sharing.timeSlicing.memoryPerReplica",
    ),
    BadSpec(
        "resource name in the reserved kubernetes.io domain",
        _plugin(flags={"resourceName": "kubernetes.io/xpu"}),
        "spec.devicePlugin.config.flags.resourceName",
    ),
    BadSpec(
        "unknown device list strategy",
        _plugin(flags={"deviceListStrategy": ["magic"]}),
        "spec.devicePlugin.config.flags.deviceListStrategy",
    ),
    BadSpec(
        "cdi strategy with cdi disabled",
        {"cdi": {"enabled": False}, **_plugin(flags={"deviceListStrategy": ["cdi"]})},
        "spec.devicePlugin.config.flags.deviceListStrategy",
    ),
    BadSpec(
        "plugin config version v2",
        _plugin(version="v2"),
        "spec.devicePlugin.config.version",
    ),
    BadSpec(
        "cdi default without cdi",
        {"cdi": {"enabled": False, "default": True}},
        "spec.cdi.default",
    ),
    BadSpec(
        "toleration Exists with a value",
        {"daemonsets": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        "spec.daemonsets.tolerations.0.value",
    ),
    BadSpec(
        "unknown DaemonSet update strategy",
        {"daemonsets": {"updateStrategy": "Sometimes"}},
        "spec.daemonsets.updateStrategy",
    ),
    BadSpec(
        "DaemonSet maxUnavailable a bare number string",
        {"daemonsets": {"maxUnavailable": "50"}},
        "spec.daemonsets.maxUnavailable",
    ),
    BadSpec(
        "unknown image pull policy",
        {"driver": {"imagePullPolicy": "Sometimes"}},
        "spec.driver.imagePullPolicy",
    ),
    BadSpec(
        "nodeSelector value that is no label value",
        {"nodeSelector": {"openxpu.io/xpu.capable": "yes please"}},
        "spec.nodeSelector.openxpu.io/xpu.capable",
    ),
    BadSpec(
        "feature discovery interval below 5s",
        {"featureDiscovery": {"intervalSeconds": 1}},
        "spec.featureDiscovery.intervalSeconds",
    ),
]
