"""The cache doctor as a guard: auto-caching verification and named causes.

A thin adapter: the work is in :class:`tokenfuse.caching.verify.AutoCache`
(shared with the gateway, which injects breakpoints through the same object)
and :mod:`tokenfuse.caching.doctor`. This guard turns its verdicts into
findings on the guard alert path.
"""

from __future__ import annotations

from decimal import Decimal

from tokenfuse.caching.verify import AutoCache
from tokenfuse.guards.base import Finding, Prompt, subject_of
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.usage import Usage


class CacheDoctorGuard:
    name = "cache_doctor"
    refuses = False

    def __init__(self, cache: AutoCache) -> None:
        self.cache = cache

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
        if prompt.info is None:
            return None
        # The cache keeps its own clock, which tests control; `now` is the guards' wall clock.
        verdict = self.cache.observe(ctx, prompt.info, usage, price)
        if verdict is None:
            return None
        return Finding(
            guard=self.name,
            severity="warning",
            subject=subject_of(ctx),
            message=f"prompt cache for {subject_of(ctx)}: {verdict.message}",
            data={
                "model": ctx.model,
                "key": ctx.key_name,
                "session": ctx.session,
                "kind": verdict.kind,
                "stopped_injection": verdict.stopped_injection,
                **verdict.data,
            },
        )
