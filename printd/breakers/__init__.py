"""Circuit breakers that keep printd from hammering a dependency that is already failing.

`core` is the pure state machine and its configuration, `shell` the trio side (circuits and
their registry), `metrics` the Prometheus export. This package file imports nothing, so that
`printd.config` (and every `printctl` command through it) loads only `core`.
"""
