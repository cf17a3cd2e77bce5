"""What a starting gateway says about its config: one summary line, and warnings
about settings that start fine but cannot do what the operator wants."""

from __future__ import annotations

from tokenfuse.config import Config
from tokenfuse.ledger.schema import redact
from tokenfuse.limits.limiter import redacted


def summary_lines(config: Config, runtime_keys: int = 0) -> list[str]:
    upstreams = ", ".join(f"{u.name} ({u.protocol})" for u in config.upstreams) or "none"
    keys = f"{len(config.keys)} in the config" + (f", {runtime_keys} at run time" if runtime_keys else "")
    g = config.guards
    if g.enabled:
        on = [n for n in ("cache_miss", "context_growth", "loop") if getattr(g, n).enabled]
        guards = ", ".join(on) or "none"
    else:
        guards = "off"
    return [
        f"tokenfuse config {config.source}",
        f"upstreams: {upstreams}",
        f"keys: {keys}",
        f"budgets: {len(config.budgets)}",
        f"store: {redact(config.store)}",
        f"counters: {redacted(config.counters)} (on failure: {config.on_counter_failure})",
        f"guards: {guards}",
        f"admin API: {'on' if config.server.admin_token else 'off (no server.admin_token)'}",
    ]


def config_warnings(config: Config) -> list[str]:
    warnings = []
    if not config.upstreams:
        warnings.append(
            f"{config.source}: no upstreams are configured, so every request will be refused; "
            "add one under `upstreams:` (docs/configuration.md) and reload"
        )
    if not config.keys:
        warnings.append(
            f"{config.source}: no keys in the config; only keys created with `tokenfuse keys create` can call"
        )
    return warnings
