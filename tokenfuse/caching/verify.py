"""Automatic prompt caching per conversation: inject, then prove it engaged.

:class:`AutoCache` is the gateway's one stateful piece of caching. Before a
request is bounded, :meth:`AutoCache.prepare` decides whether this request
gets breakpoints (the caching scope matches, the conversation has not been
switched off, turns do not arrive further apart than any cache lives) and
with which lifetime, from the gaps observed between the conversation's turns
(docs/caching.md shows the break-even). After the request settles,
:meth:`AutoCache.observe` checks the previous turn's injection: the next turn
of the conversation must read from the cache. If it does not, injection stops
for that conversation and the finding names the cause (:mod:`doctor`).
Conversations whose caching the gateway did not touch are diagnosed the same
way, after ``min_requests`` consecutive turns that read nothing.

A conversation is one key, session and model. Without ``x-tokenfuse-session``
consecutive requests of a key and model are compared only when the later one
continues the earlier one's history.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

from tokenfuse.caching.doctor import (
    TTL_SECONDS,
    Cause,
    TurnPrint,
    diagnose,
    first_differing_span,
    turn_print_of,
)
from tokenfuse.caching.inject import Injection, inject, min_cacheable_tokens, supports
from tokenfuse.config import CachingConfig, parse_duration
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.usage import Usage

_GAPS_KEPT = 4
_INFLIGHT_KEPT = 4096


def cache_saved_usd(price: Price | None, usage: Usage, cost: Decimal) -> Decimal | None:
    """What caching saved on this request (negative: what it cost) against the same request uncached."""
    if price is None or usage.estimated or (usage.cache_read == 0 and usage.cache_write_all == 0):
        return None if price is None or usage.estimated else Decimal(0)
    uncached = price.cost(Usage(input_uncached=usage.input_total, output=usage.output))
    return uncached - cost


@dataclass(slots=True)
class _Conversation:
    last_ts: float | None = None
    gaps: deque[float] = field(default_factory=lambda: deque(maxlen=_GAPS_KEPT))
    injected: Injection | None = None  # placed in the previous turn, to verify now
    off: str | None = None  # why injection stopped for this conversation
    prev: TurnPrint | None = None
    misses: int = 0
    miss_kind: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What :meth:`AutoCache.observe` found: a cause worth reporting, and whether it ends injection."""

    kind: str  # "verification_failed" or a doctor cause
    message: str
    data: dict[str, Any]
    stopped_injection: bool


class AutoCache:
    def __init__(
        self, config: CachingConfig, *, min_requests: int = 2, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.min_requests = min_requests
        self.clock = clock
        self.one_hour_after = float(parse_duration(config.one_hour_after))
        self.max_gap = float(parse_duration(config.max_gap))
        self._convs: dict[tuple[str, str, str], _Conversation] = {}
        self._prints: dict[int, tuple[object, TurnPrint]] = {}
        # Per request, from prepare to observe: when it arrived and what was injected.
        # Kept per request, not per conversation, because observe runs after the
        # answer is sent and the conversation's next turn may already have arrived.
        # Gaps are measured between arrivals. Bounded: a request that fails never observes.
        self._inflight: dict[int, tuple[RequestInfo, float, Injection | None]] = {}

    def reconfigure(self, config: CachingConfig) -> None:
        """Take a reloaded ``caching:`` section; conversations and their verdicts are kept."""
        self.config = config
        self.one_hour_after = float(parse_duration(config.one_hour_after))
        self.max_gap = float(parse_duration(config.max_gap))

    # -- before forwarding ---------------------------------------------------------

    def enabled_for(self, ctx: RequestContext) -> bool:
        for scope in self.config.auto:
            if scope.workflow is not None and scope.workflow != ctx.workflow:
                continue
            if scope.key is not None and scope.key != ctx.key_name:
                continue
            if scope.model is not None and not fnmatchcase(ctx.model, scope.model):
                continue
            return True
        return False

    def prepare(self, ctx: RequestContext, info: RequestInfo, now: float | None = None) -> Injection | None:
        """Inject breakpoints into ``info`` when this conversation should get them; None when out of scope.

        Call it before ``encode_body`` and ``compute_bound``: it changes both."""
        if not self.config.auto or not supports(info) or not self.enabled_for(ctx):
            return None
        ts = self.clock() if now is None else now
        conv = self._conversation(ctx)
        if conv.off is not None:
            injection = Injection(0, "5m", conv.off)
        else:
            gap = None if conv.last_ts is None else ts - conv.last_ts
            if gap is not None and gap > self.max_gap:
                injection = Injection(0, "5m", f"turns arrive {gap:,.0f} s apart, longer than any cache lives")
            else:
                gaps = [*conv.gaps, *([gap] if gap is not None else [])]
                ttl = "1h" if any(g > self.one_hour_after for g in gaps) else "5m"
                injection = inject(info, ttl)
        self._inflight[id(info)] = (info, ts, injection if injection.markers else None)
        while len(self._inflight) > _INFLIGHT_KEPT:
            del self._inflight[next(iter(self._inflight))]
        return injection

    # -- after settling --------------------------------------------------------------

    def print_of(self, info: RequestInfo) -> TurnPrint | None:
        """The request's turn print (computed once per request), or None for routes without markers."""
        if not supports(info):
            return None
        memo = self._prints.get(id(info))
        if memo is not None and memo[0] is info.body:
            return memo[1]
        fp = turn_print_of(info)
        self._prints[id(info)] = (info.body, fp)
        while len(self._prints) > 64:
            del self._prints[next(iter(self._prints))]
        return fp

    def observe(
        self,
        ctx: RequestContext,
        info: RequestInfo,
        usage: Usage,
        price: Price | None,
        now: float | None = None,
    ) -> Verdict | None:
        """Verify the previous turn's injection and diagnose a cache that does not engage."""
        entry = self._inflight.pop(id(info), None)
        if entry is not None and entry[0] is not info:
            entry = None
        cur = self.print_of(info)
        if cur is None or usage.estimated:
            return None
        conv = self._conversation(ctx)
        ts = now if now is not None else entry[1] if entry is not None else self.clock()
        prev, injected = conv.prev, conv.injected
        gap = None if conv.last_ts is None else max(0.0, ts - conv.last_ts)
        if gap is not None:
            conv.gaps.append(gap)
        conv.last_ts, conv.prev = ts, cur
        conv.injected = entry[2] if entry is not None else None
        if prev is None or not cur.continues(prev):
            conv.misses, conv.miss_kind = 0, None
            return None
        if usage.cache_read > 0:
            cur.texts = []  # a working cache needs no evidence kept
            conv.misses, conv.miss_kind = 0, None
            return None
        minimum = min_cacheable_tokens(info.model)
        has_price = price is not None and price.supports_cache
        cause = diagnose(prev, cur, usage.cache_read, gap or 0.0, minimum, has_price)
        if cause is not None and cause.kind == "prefix_changes":
            cause = _with_span(cause, prev, cur)
        if injected is not None and injected.markers and conv.off is None and (gap or 0.0) <= TTL_SECONDS[injected.ttl]:
            why = cause.message if cause is not None else "the provider reported no cache reads"
            conv.off = f"auto-caching stopped for this conversation: {why}"
            data = {"cause": cause.kind if cause else "unknown", **(cause.data if cause else {})}
            return Verdict(
                "verification_failed",
                f"auto-caching did not engage: the previous turn carried {injected.markers} injected cache "
                f"breakpoint(s) ({injected.ttl}), this turn read 0 tokens from the cache. Injection is stopped for "
                f"this conversation. Cause: {why}",
                data,
                True,
            )
        if cause is None:
            conv.misses, conv.miss_kind = 0, None
            return None
        conv.misses = conv.misses + 1 if conv.miss_kind == cause.kind else 1
        conv.miss_kind = cause.kind
        if conv.misses < self.min_requests:
            return None
        return Verdict(cause.kind, cause.message, {"cause": cause.kind, "turns": conv.misses, **cause.data}, False)

    def stopped(self, ctx: RequestContext) -> str | None:
        """Why injection stopped for this conversation, if it did."""
        conv = self._convs.get(_key(ctx))
        return None if conv is None else conv.off

    def _conversation(self, ctx: RequestContext) -> _Conversation:
        key = _key(ctx)
        conv = self._convs.pop(key, None) or _Conversation()
        self._convs[key] = conv  # re-inserted: dict order is least recently used first
        if len(self._convs) > self.config.max_tracked:
            del self._convs[next(iter(self._convs))]
        return conv


def _key(ctx: RequestContext) -> tuple[str, str, str]:
    return (ctx.key_name, ctx.session or "", ctx.model)


def _with_span(cause: Cause, prev: TurnPrint, cur: TurnPrint) -> Cause:
    """Add the exact first differing bytes when both turns' texts of that block are at hand (live only)."""
    index = cause.data.get("block_index")
    if not isinstance(index, int) or index >= min(len(prev.texts), len(cur.texts)):
        return cause
    offset, before, after = first_differing_span(prev.texts[index], cur.texts[index])
    return Cause(
        cause.kind,
        f"{cause.message}. In {cur.label(index)}, at byte {offset:,}: {before!r} became {after!r}",
        {**cause.data, "span_offset": offset, "span_before": before, "span_after": after},
    )
