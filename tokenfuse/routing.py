"""Budget-aware routing: serve a request for model A as model B of the same protocol instead of refusing it.

Rules (config ``routing:``, docs/routing.md) are compiled once per config
generation (:func:`compile_routing`, from ``build_runtime``) against the price
book and the upstreams, so a rule that could not be served fails the load or
the reload, never a request. The gateway asks :meth:`RoutingTable.decide` once
per request, before pricing, so the bound, the budgets and the kill switches
all apply to the model actually served.

A budget condition reads :class:`BudgetLevels`: each budget's percentage used
as the limiter last reported it when a request settled (the readings the
alerts get, so no extra counter round trip), refreshed in the background at
most every 250 ms so that other replicas' spend, a new window or a raised
limit are seen too.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Protocol

from tokenfuse.aio import spawn
from tokenfuse.config import Config, ConfigError, KeyConfig, RoutingRule
from tokenfuse.limits.budgets import BudgetStatus
from tokenfuse.pricing import PriceBook, canonical_model, canonical_pattern
from tokenfuse.protocols.bedrock import model_family

log = logging.getLogger("tokenfuse.routing")

PROTOCOLS = ("openai", "anthropic", "bedrock")
REFRESH_S = 0.25
HEADER = "x-tokenfuse-routed"
_MATCH_FIELDS = ("key", "principal", "workflow", "team", "tags")


class _Picker(Protocol):
    def pick(self, protocol: str, model: str) -> object | None: ...


def _printable(text: str) -> str:
    # A header value is latin-1 without control characters; a model name is client data.
    return "".join(c if " " <= c <= "~" else "?" for c in text)


@dataclass(frozen=True, slots=True)
class Routed:
    """A routing decision: the request asked for `requested` and is served as `model`."""

    rule: str
    requested: str  # as the caller sent it
    model: str  # the rule's `to`

    def header(self) -> str:
        return _printable(f"{self.requested} -> {self.model} (rule {self.rule})")


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    match: tuple[tuple[str, tuple[str, ...]], ...]  # (field, any of these values)
    sources: tuple[str, ...]  # the `from` glob, canonical and as written (lower-cased)
    to: str
    to_canonical: str
    protocols: frozenset[str]  # the request protocols this rule routes: those with an upstream for `to`
    budget: str | None
    above_pct: float
    headers: tuple[tuple[str, tuple[str, ...]], ...]

    def routes(
        self,
        key: KeyConfig,
        protocol: str,
        route: str,
        names: tuple[str, ...],
        model: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None,
        percent: Callable[[str], float | None],
    ) -> bool:
        """Whether this rule sends the request to `to`; the budget is read last, being the dearest check."""
        if protocol not in self.protocols:
            return False
        for field, want in self.match:
            if field == "tags":
                if not any(t in want for t in key.tags):
                    return False
            elif _key_field(key, field) not in want:
                return False
        if self.to_canonical in names or not any(fnmatchcase(n, g) for g in self.sources for n in names):
            return False
        for name, values in self.headers:
            if headers.get(name) not in values:
                return False
        if (
            protocol == "bedrock"
            and not route.startswith("converse")
            and model_family(model, body) != model_family(self.to)
        ):
            return False  # an InvokeModel body is in its model family's own format
        if self.budget is not None:
            level = percent(self.budget)
            return level is not None and level >= self.above_pct
        return True


def _key_field(key: KeyConfig, field: str) -> str | None:
    if field == "key":
        return key.name
    value: str | None = getattr(key, field)
    return value


class RoutingTable:
    """The compiled rules of one config generation, tried in order; the first that applies wins."""

    __slots__ = ("budgets", "rules")

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        self.budgets = frozenset(r.budget for r in rules if r.budget is not None)

    def decide(
        self,
        key: KeyConfig,
        protocol: str,
        route: str,
        model: str,
        headers: Mapping[str, str],
        body: Mapping[str, Any] | None = None,
        percent: Callable[[str], float | None] = lambda _name: None,
    ) -> Routed | None:
        """Where to send a request for `model`: None to serve it as asked.

        A routed request is not routed again: rules do not chain.
        """
        names = (canonical_model(model), model.strip().lower())
        for rule in self.rules:
            if rule.routes(key, protocol, route, names, model, headers, body, percent):
                return Routed(rule.name, model, rule.to)
        return None


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def compile_routing(config: Config, prices: PriceBook, upstreams: _Picker) -> RoutingTable | None:
    """The config's routing rules, checked against its prices and upstreams; None when it has none.

    Raises ConfigError naming every rule that could not be served and how to fix it.
    """
    if not config.routing:
        return None
    problems: list[str] = []
    rules: list[Rule] = []
    for i, rc in enumerate(config.routing):
        where = f"{config.source}: routing[{i}] (name: {rc.name})"
        rule, found = _compile_one(rc, prices, upstreams)
        problems += [f"{where}.{msg}" for msg in found]
        rules.append(rule)
    if problems:
        raise ConfigError("\n".join(problems))
    return RoutingTable(rules)


def _compile_one(rc: RoutingRule, prices: PriceBook, upstreams: _Picker) -> tuple[Rule, list[str]]:
    problems: list[str] = []
    if prices.lookup(rc.to) is None:
        near = prices.suggest(rc.to)
        problems.append(
            f"to: model {rc.to!r} has no known price, so requests routed to it could not be bounded or capped; "
            "add it under `prices:` (USD per million tokens)"
            + (f" or use one of {', '.join(near)}" if near else "")
        )
    served = frozenset(p for p in PROTOCOLS if upstreams.pick(p, rc.to) is not None)
    wanted = rc.match.values("protocol")
    if wanted is not None:
        for p in wanted:
            if p not in served:
                problems.append(
                    f"to: no {p} upstream serves {rc.to!r}; add it to an upstream's `models:` or drop {p} from "
                    "match.protocol"
                )
    elif not served:
        problems.append(f"to: no upstream serves {rc.to!r}; add it to an upstream's `models:`")
    elif not _is_glob(rc.from_):
        # A named source model: each protocol that serves it must be able to serve the target too.
        for p in PROTOCOLS:
            if p not in served and upstreams.pick(p, rc.from_) is not None:
                problems.append(
                    f"to: {rc.from_!r} is served over {p} but {rc.to!r} is not, so such requests could not be "
                    f"routed; add {rc.to!r} to a {p} upstream's `models:` or set match.protocol"
                )
    protocols = served if wanted is None else served & frozenset(wanted)
    when = rc.when
    rule = Rule(
        name=rc.name,
        match=tuple((f, vs) for f in _MATCH_FIELDS if (vs := rc.match.values(f)) is not None),
        sources=tuple(sorted({canonical_pattern(rc.from_), rc.from_.strip().lower()})),
        to=rc.to,
        to_canonical=canonical_model(rc.to),
        protocols=protocols,
        budget=when.budget if when is not None else None,
        above_pct=when.above_pct if when is not None and when.above_pct is not None else 0.0,
        headers=tuple(
            (name, tuple(v) if isinstance(v, list) else (v,))
            for name, v in sorted((when.header or {}).items() if when is not None else ())
            if v is not None
        ),
    )
    return rule, problems


class BudgetLevels:
    """Each budget's percentage used, as last heard; what a routing rule's budget condition reads.

    Fed by the limiter's settle hook (no I/O) and by a snapshot taken in the
    background when the last one is older than `refresh_s`, so reading a level
    never waits on the counters. A budget not heard of yet reads as None (does
    not route).
    """

    def __init__(self, refresh_s: float = REFRESH_S) -> None:
        self.refresh_s = refresh_s
        # Where a refresh reads every budget's status (the limiter's snapshot); None: settles only.
        self.source: Callable[[], Awaitable[Sequence[BudgetStatus]]] | None = None
        self._pct: dict[str, float] = {}
        self._heard: dict[str, float] = {}  # monotonic time a settle last reported each budget
        self._refreshed = -math.inf
        self._pending: asyncio.Task[None] | None = None

    def observe(self, statuses: Iterable[BudgetStatus], now: float | None = None) -> None:
        """The limiter's settle hook: the budgets this request counted against, as they stand now."""
        t = time.monotonic() if now is None else now
        for s in statuses:
            if s.source != "session":  # one per agent run: never routed on, never kept
                self._pct[s.name] = s.percent
                self._heard[s.name] = t

    def percent(self, name: str) -> float | None:
        if (
            self.source is not None
            and self._pending is None
            and time.monotonic() - self._refreshed >= self.refresh_s
        ):
            self._refreshed = time.monotonic()
            self._pending = spawn(self._refresh_in_background())
        return self._pct.get(name)

    async def _refresh_in_background(self) -> None:
        try:
            await self.refresh()
        finally:
            self._pending = None

    async def refresh(self) -> None:
        """Read every budget's status now; keep what settles reported meanwhile, which is newer."""
        source = self.source
        if source is None:
            return
        started = self._refreshed = time.monotonic()
        try:
            statuses = await source()
        except Exception as exc:  # counters down: keep the last levels; the limiter says why, loudly
            log.debug("budget levels not refreshed: %s", exc)
            return
        fresh = {s.name: s.percent for s in statuses if s.source != "session"}
        for name, heard in self._heard.items():
            if heard > started and name in self._pct:
                fresh[name] = self._pct[name]
        self._pct = fresh
        self._heard = {n: t for n, t in self._heard.items() if n in fresh}

    def levels(self) -> dict[str, float]:
        return dict(self._pct)
