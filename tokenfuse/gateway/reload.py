"""Reload without restart: re-read the config file and swap what requests read from it.

Everything a request reads from the config (keys, upstreams, prices, guards,
defaults, pricing and session rules) is one immutable :class:`Runtime`. A
request takes the current one when it starts and keeps it to the end, so a
request in flight finishes on the config it started with; a reload builds a
complete new ``Runtime`` and then swaps it in with one assignment, together
with the limiter's budgets (no ``await`` between the two).

A config that does not validate, or whose prices file cannot be read, changes
nothing: the old one keeps running and the reason is logged and returned.
Settings that shape the process itself (listening address, store, counters,
ledger batching, alerts) need a restart; a reload keeps their running values
and says which changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tokenfuse.config import Config, ConfigError, load_config
from tokenfuse.control.keys import RuntimeKeys
from tokenfuse.gateway.identity import KeyRing
from tokenfuse.gateway.upstream import Router
from tokenfuse.guards import Guards
from tokenfuse.pricing import PriceBook
from tokenfuse.routing import RoutingTable, compile_routing

log = logging.getLogger("tokenfuse.gateway")

# Top-level settings a running gateway cannot change; a reload keeps their running values.
RESTART_ONLY = (
    "server",
    "store",
    "counters",
    "on_counter_failure",
    "counters_replicas",
    "reservation_ttl_s",
    "admission_wait_ms",
    "kill_poll_ms",
    "alerts",
    "ledger",
)


@dataclass(frozen=True, slots=True)
class Runtime:
    """One generation of the config and what is built from it; never changed once built."""

    config: Config
    keys: KeyRing
    router: Router
    prices: PriceBook
    guards: Guards | None = None
    generation: int = 0
    routing: RoutingTable | None = None  # budget-aware routing rules (tokenfuse/routing.py); None: none


def build_runtime(
    config: Config, runtime_keys: RuntimeKeys | None, *, prices: PriceBook | None = None, generation: int = 0
) -> Runtime:
    """Everything but the guards (they need the running gateway's alert sink)."""
    book = prices or PriceBook.build(
        {m: p.model_dump(exclude_none=True) for m, p in config.prices.items()}, config.pricing.file
    )
    router = Router(config)
    routing = compile_routing(config, book, router)
    return Runtime(config, KeyRing(config, runtime_keys), router, book, None, generation, routing)


# The Runtime of the request this task is serving; None outside a request.
REQUEST_RUNTIME: ContextVar[Runtime | None] = ContextVar("tokenfuse_runtime", default=None)


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    message: str
    changes: list[str] = field(default_factory=list)
    restart_needed: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "reloaded": self.ok,
            "message": self.message,
            "changes": self.changes,
            "restart_needed": self.restart_needed,
        }


class Reloadable(Protocol):
    """What a reload needs from the gateway (tokenfuse.gateway.app.Gateway)."""

    runtime: Runtime
    runtime_keys: RuntimeKeys
    limiter: Any
    admin: Any
    caching: Any


def restart_only_changes(old: Config, new: Config) -> list[str]:
    return [name for name in RESTART_ONLY if getattr(old, name) != getattr(new, name)]


def describe_changes(old: Config, new: Config) -> list[str]:
    """What a reload changes, one short phrase per kind of setting."""
    out: list[str] = []

    def named(kind: str, before: list[Any], after: list[Any]) -> None:
        b = {x.name: x for x in before}
        a = {x.name: x for x in after}
        added = sorted(set(a) - set(b))
        removed = sorted(set(b) - set(a))
        changed = sorted(n for n in set(a) & set(b) if a[n] != b[n])
        for verb, names in (("added", added), ("removed", removed), ("changed", changed)):
            if names:
                out.append(f"{kind} {verb}: {', '.join(names)}")

    named("keys", old.keys, new.keys)
    named("upstreams", old.upstreams, new.upstreams)
    named("budgets", old.budgets, new.budgets)
    for section in ("prices", "pricing", "guards", "defaults", "sessions", "sigv4", "caching", "routing"):
        if getattr(old, section) != getattr(new, section):
            out.append(f"{section} changed")
    return out


class Reloader:
    """Serialises reloads of one gateway and performs the swap."""

    def __init__(self, gateway: Reloadable, guard_sink: Callable[[Config], Guards | None] | None = None) -> None:
        self.gateway = gateway
        # Builds the guards for a config (the gateway's alert sink is bound in).
        self.guard_sink = guard_sink
        self._lock = asyncio.Lock()

    async def reload(self, path: str | None = None) -> ReloadResult:
        async with self._lock:
            result = await self._reload(path)
        if result.ok:
            log.warning("config reloaded: %s", result.message)
        else:
            log.error("config NOT reloaded, still running the previous one: %s", result.message)
        return result

    async def _reload(self, path: str | None) -> ReloadResult:
        gw = self.gateway
        old_rt = gw.runtime
        old = old_rt.config
        source = path or old.source
        if not Path(source).is_file():
            return ReloadResult(
                False, f"{source}: no such file to re-read; start the gateway with --config FILE to reload it"
            )
        try:
            new = await asyncio.to_thread(load_config, source)
        except ConfigError as exc:
            return ReloadResult(False, str(exc).replace("\n", "; "))
        restart = restart_only_changes(old, new)
        if restart:
            # Keep what is running for these; the rest takes effect now.
            new = new.model_copy(update={name: getattr(old, name) for name in restart})
        try:
            rt = await asyncio.to_thread(
                build_runtime, new, gw.runtime_keys, generation=old_rt.generation + 1
            )
        except ConfigError as exc:  # e.g. a routing rule whose target has no price or upstream
            return ReloadResult(False, str(exc).replace("\n", "; "))
        except Exception as exc:  # e.g. pricing.file unreadable or invalid
            return ReloadResult(False, f"{source}: {exc}")
        guards = old_rt.guards
        if new.guards != old.guards and self.guard_sink is not None:
            guards = self.guard_sink(new)
        rt = dataclasses.replace(rt, guards=guards)
        changes = describe_changes(old, new)
        clash = sorted({k.name for k in new.keys} & gw.runtime_keys.names())
        # The swap: no await from here to the assignment, so no request sees half of it.
        if gw.limiter is not None:
            gw.limiter.set_config_budgets(new)
        gw.runtime = rt
        if new.caching != old.caching and getattr(gw, "caching", None) is not None:
            gw.caching.reconfigure(new.caching)
        if gw.admin is not None:
            gw.admin.guard_findings = guards.recent if guards is not None else None
        message = f"{source} (generation {rt.generation}): " + ("; ".join(changes) or "no changes")
        if restart:
            message += f"; needs a restart to take effect: {', '.join(restart)} (still running the old values)"
        if clash:
            message += f"; config keys shadow run-time keys of the same name: {', '.join(clash)}"
        return ReloadResult(True, message, changes, restart)
