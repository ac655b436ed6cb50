"""Driver upgrades across nodes: a per-node state machine kept in node labels (the state
names of NVIDIA's k8s-operator-libs upgrade package), a cluster planner, and an executor
that applies their actions through the API. `machine` and `planner` are pure; `executor`
is the only part that talks to the API server."""
