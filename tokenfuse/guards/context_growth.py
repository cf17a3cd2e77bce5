"""A conversation whose context grows every step, with the cost of going on.

An agent that re-sends its whole history sends input that grows by roughly
the same amount per step, so its total spend grows quadratically. After
``min_requests`` consecutive requests of one conversation whose input rose
each time, the guard projects the next ``project_steps`` steps along the same
line (step ``j`` sends ``last + j × growth`` input tokens at the last request's
effective input rate, plus the last request's output cost) and reports it
when that projection reaches ``min_projected_usd``.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

from tokenfuse.config import ContextGrowthGuardConfig
from tokenfuse.guards.base import Finding, Prompt, Tracks, conversation_key, subject_of, usd
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.pricing.price import plain
from tokenfuse.usage import Usage


@dataclass(slots=True)
class _Track:
    first: int  # input tokens of the first request of the rising streak
    last: int
    steps: int  # requests in the streak
    spent: Decimal  # USD of the streak so far


@dataclass(frozen=True, slots=True)
class Projection:
    growth: Decimal  # input tokens added per step, on average
    input_tokens: int  # over the next `steps` steps
    input_usd: Decimal
    output_usd: Decimal

    @property
    def usd(self) -> Decimal:
        return self.input_usd + self.output_usd


def project(
    first: int, last: int, steps_seen: int, steps: int, input_usd: Decimal, output_usd: Decimal
) -> Projection:
    """Project ``steps`` more steps of linear growth from a streak of ``steps_seen``
    requests that went from ``first`` to ``last`` input tokens; the last one cost
    ``input_usd`` for its input and ``output_usd`` for its output."""
    growth = Decimal(last - first) / (steps_seen - 1)
    # sum_{j=1..K} (last + j·g) = K·last + g·K(K+1)/2
    tokens = (steps * last + growth * steps * (steps + 1) / 2).to_integral_value(ROUND_HALF_UP)
    per_token = input_usd / last if last else Decimal(0)
    return Projection(growth, int(tokens), tokens * per_token, steps * output_usd)


class ContextGrowthGuard:
    name = "context_growth"
    refuses = False

    def __init__(self, config: ContextGrowthGuardConfig, max_tracked: int = 10_000) -> None:
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
        size = usage.input_total
        if price is None or size == 0:
            return None
        key = conversation_key(ctx, prompt)
        track = self._tracks.get(key)
        if track is None or size <= track.last:
            self._tracks.put(key, _Track(size, size, 1, cost))
            return None
        track.last, track.steps, track.spent = size, track.steps + 1, track.spent + cost
        if track.steps < self.config.min_requests:
            return None
        input_usd = price.cost(
            Usage(usage.input_uncached, usage.cache_read, usage.cache_write, usage.cache_write_1h)
        )
        output_usd = max(cost - input_usd, Decimal(0))
        k = self.config.project_steps
        p = project(track.first, track.last, track.steps, k, input_usd, output_usd)
        if p.usd < self.config.min_projected_usd:
            return None
        growth = p.growth.to_integral_value(ROUND_HALF_UP)
        effective = (input_usd / size).scaleb(6) if size else Decimal(0)
        message = (
            f"context keeps growing in {subject_of(ctx)}: input rose on each of its last {track.steps} requests, "
            f"{track.first:,} → {track.last:,} tokens (+{growth:,} per step), {usd(track.spent)} spent so far. "
            f"The next {k} steps at this rate send {k} × {track.last:,} + {growth:,} × {k * (k + 1) // 2} "
            f"≈ {p.input_tokens:,} input tokens × {usd(effective)}/M (this request's effective input rate) "
            f"= {usd(p.input_usd)}, plus {k} × {usd(output_usd)} output = {usd(p.usd)}. "
            "Summarise or truncate the history, or cap the session (sessions.max_usd)."
        )
        return Finding(
            guard=self.name,
            severity="warning",
            subject=subject_of(ctx),
            message=message,
            data={
                "model": ctx.model,
                "key": ctx.key_name,
                "session": ctx.session,
                "requests": track.steps,
                "first_input_tokens": track.first,
                "last_input_tokens": track.last,
                "growth_per_step": int(growth),
                "spent_usd": plain(track.spent),
                "project_steps": k,
                "projected_input_tokens": p.input_tokens,
                "projected_usd": plain(p.usd),
            },
        )
