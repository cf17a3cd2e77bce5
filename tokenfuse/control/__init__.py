"""The control plane: what operators use to steer running gateways.

Kill switches, run-time budgets and keys (stored beside the ledger so every
replica sees them), the admin API, and the CLI commands that reach them
(`kill`, `revive`, `budget`, `keys`, `status`). The data plane's core that
these steer (bounds, budgets, the limiter and its counters) stays in
:mod:`tokenfuse.limits`.
"""
