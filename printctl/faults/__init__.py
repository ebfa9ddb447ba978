"""Faults on purpose: what `printctl failover-test` injects into a running cluster, and how it
measures what followed.

| module | what |
| --- | --- |
| `proxy` | a TCP proxy that can be cut (in a thread, or as the local cluster's database proxy process) |
| `plan` | fault kinds and the rounds drawn from a seed (pure) |
| `board` | the simulated agents' connections and errors, followed from the workers' event files |
| `report` | detection and reconnect figures, SLOs, the report (pure) |
| `observe` | the cluster's health and membership as a round sees them; detected? settled? (pure decisions) |
| `inject` | how a fault is applied and healed: on a local cluster, or by the operator's commands |
| `runner` | the rounds: inject, hold, heal, wait until the cluster settled, measure |
| `worker` | the load test's worker process, writing the agents' events for `board` |
"""
