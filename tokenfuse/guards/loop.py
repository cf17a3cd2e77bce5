"""The same request paid for again and again: an agent retrying a failing step.

Every ok request's body hash is remembered per session (per key without a
session) for ``window``. The ``repeats``-th identical body inside the window
is a loop: with ``action: alert`` it is served and reported; with
``action: refuse`` it is refused before it reaches the provider, in the
caller's protocol, as a non-retryable session-cap error.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from tokenfuse.config import LoopGuardConfig
from tokenfuse.guards.base import Finding, Prompt, Tracks, subject_of, usd
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.pricing.price import plain
from tokenfuse.usage import Usage

# Distinct bodies remembered per subject; an agent loop repeats a recent one.
BODIES_PER_SUBJECT = 64


_Seen = deque[tuple[float, Decimal]]  # (when, cost) of each ok copy inside the window


class LoopGuard:
    name = "loop"

    def __init__(self, config: LoopGuardConfig, max_tracked: int = 10_000) -> None:
        self.config = config
        self.window_s = float(config.window_s)
        self.refuses = config.action == "refuse"
        self._subjects: Tracks[tuple[str, str], Tracks[int, _Seen]] = Tracks(max_tracked)

    def _seen(self, ctx: RequestContext, prompt: Prompt, now: float, *, create: bool) -> _Seen | None:
        key = (ctx.key_name, ctx.session or "")
        bodies = self._subjects.get(key)
        if bodies is None:
            if not create:
                return None
            bodies = Tracks(BODIES_PER_SUBJECT)
            self._subjects.put(key, bodies)
        seen = bodies.get(prompt.body_hash)
        if seen is None:
            if not create:
                return None
            seen = deque(maxlen=self.config.repeats)
            bodies.put(prompt.body_hash, seen)
        while seen and now - seen[0][0] > self.window_s:
            seen.popleft()
        return seen

    def check(self, ctx: RequestContext, prompt: Prompt, now: float) -> Finding | None:
        if not self.refuses:
            return None
        seen = self._seen(ctx, prompt, now, create=False)
        if seen is None or len(seen) + 1 < self.config.repeats:
            return None
        return self._finding(ctx, len(seen) + 1, seen, refused=True)

    def observe(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        usage: Usage,
        cost: Decimal,
        price: Price | None,
        now: float,
    ) -> Finding | None:
        seen = self._seen(ctx, prompt, now, create=True)
        assert seen is not None
        seen.append((now, cost))
        if len(seen) < self.config.repeats:
            return None
        return self._finding(ctx, len(seen), seen, refused=False)

    def _finding(self, ctx: RequestContext, count: int, seen: _Seen, *, refused: bool) -> Finding:
        spent = sum((c for _, c in seen), Decimal(0))
        what = "refused" if refused else "served"
        message = (
            f"possible loop in {subject_of(ctx, model=False)}: the same {ctx.model} request body arrived {count} "
            f"times within {self.config.window}, {usd(spent)} paid for the {len(seen)} served; this one was {what}. "
            + (
                "Do not retry this request unchanged; fix the failing step or start a new session."
                if refused
                else "Check the agent for a retry loop; set guards.loop.action: refuse to stop it automatically."
            )
        )
        return Finding(
            guard=self.name,
            severity="critical" if refused else "warning",
            subject=subject_of(ctx, model=False),
            message=message,
            data={
                "model": ctx.model,
                "key": ctx.key_name,
                "session": ctx.session,
                "repeats": count,
                "window": self.config.window,
                "spent_usd": plain(spent),
                "action": "refused" if refused else "alert",
            },
        )


def _subject_key(ctx: RequestContext) -> tuple[str, str]:
    return (ctx.key_name, ctx.session or "")
