"""Prompt caching that silently never engages, priced in dollars.

An agent re-sends its whole conversation every step. When each request's
prompt starts with the previous request's prompt, those repeated tokens could
be read from the provider's cache at the cache-read rate; billed as uncached
input instead, each one costs ``input - cache_read`` more. Consecutive
requests of one conversation that read (almost) none of their repeated prefix
from the cache are counted; past ``min_requests`` and ``min_usd`` the guard
reports what a working cache would have saved, with the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from tokenfuse.config import CacheMissGuardConfig
from tokenfuse.guards.base import Finding, Prompt, Tracks, conversation_key, rate, subject_of, usd
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.pricing.price import plain
from tokenfuse.usage import Usage


@dataclass(slots=True)
class _Track:
    items: int  # conversation items of the last request
    last_item: int  # fingerprint of its last item
    input_total: int  # its input tokens, all classes
    misses: int = 0
    requests: int = 0
    # (input rate, cache-read rate) -> repeated tokens billed uncached at those rates
    tokens: dict[tuple[Decimal, Decimal], int] = field(default_factory=dict)


class CacheMissGuard:
    name = "cache_miss"
    refuses = False

    def __init__(self, config: CacheMissGuardConfig, max_tracked: int = 10_000) -> None:
        self.config = config
        self._tracks: Tracks[tuple[str, str, str, int], _Track] = Tracks(max_tracked)

    def check(self, ctx: RequestContext, prompt: Prompt, now: float) -> Finding | None:
        return None

    def observe(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        usage: Usage,
        cost: Decimal,
        price: Price | None,
        now: float,
    ) -> Finding | None:
        if price is None or price.cache_read is None or not prompt.items:
            return None
        key = conversation_key(ctx, prompt)
        track = self._tracks.get(key)
        n = len(prompt.items)
        last_item = prompt.item(n - 1)
        if track is None:
            self._tracks.put(key, _Track(n, last_item, usage.input_total))
            return None
        repeated = track.input_total if _extends(prompt, track) else 0
        track.items, track.last_item, track.input_total = n, last_item, usage.input_total
        if repeated < max(self.config.min_prefix_tokens, 1):
            return None  # too short to cache, or not a continuation: neither a miss nor a hit
        # Tokens of the repeated prefix billed as ordinary input.
        uncached = min(usage.input_uncached, max(0, repeated - usage.cache_read - usage.cache_write_all))
        if usage.cache_read * 2 >= repeated or uncached * 2 < repeated:
            track.misses, track.requests, track.tokens = 0, 0, {}  # the cache is doing its job
            return None
        tier = price.tier_for(usage.input_total)
        rates = (tier.input, tier.rate("cache_read"))
        track.tokens[rates] = track.tokens.get(rates, 0) + uncached
        track.misses += 1
        saved = savings(track.tokens)
        if track.misses < self.config.min_requests or saved < self.config.min_usd or saved <= 0:
            return None
        return self._finding(ctx, track, saved)

    def _finding(self, ctx: RequestContext, track: _Track, saved: Decimal) -> Finding:
        tokens = sum(track.tokens.values())
        math = " + ".join(
            f"{n:,} × ({rate(inp)} − {rate(read)})" for (inp, read), n in sorted(track.tokens.items())
        )
        message = (
            f"prompt caching is not engaging for {subject_of(ctx)}: its last {track.misses} requests each re-sent "
            f"the previous prompt and read almost none of it from the cache, {tokens:,} repeated input tokens "
            f"billed uncached. A working cache would have saved {math} = {usd(saved)}. Check that cache markers "
            "(cache_control / cachePoint) reach the provider and that nothing before them changes per request."
        )
        first = min(track.tokens)
        return Finding(
            guard=self.name,
            severity="warning",
            subject=subject_of(ctx),
            message=message,
            data={
                "model": ctx.model,
                "key": ctx.key_name,
                "session": ctx.session,
                "requests": track.misses,
                "repeated_uncached_tokens": tokens,
                "input_rate_per_m": plain(first[0]),
                "cache_read_rate_per_m": plain(first[1]),
                "savings_usd": plain(saved),
            },
        )


def savings(tokens: dict[tuple[Decimal, Decimal], int]) -> Decimal:
    """USD a working cache would have saved: tokens × (input − cache_read) per million."""
    return sum((n * (inp - read) for (inp, read), n in tokens.items()), Decimal(0)).scaleb(-6)


def _extends(prompt: Prompt, track: _Track) -> bool:
    """Does this prompt start with the previous one (same head, same item where it ended)?"""
    return len(prompt.items) >= track.items > 0 and prompt.item(track.items - 1) == track.last_item
