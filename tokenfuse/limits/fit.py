"""Fit a request to a budget: the largest output limit whose bound fits the headroom.

A request whose output bound (``max_tokens``) does not fit what is left, but
whose input plus a useful minimum of output does, is forwarded with a lower
output limit instead of being refused. The reservation is the true bound of
the request *as forwarded*, so the cap argument of docs/limits.md is
unchanged; the provider stops at the lowered limit and says so in its own stop
reason (``max_tokens`` / ``length``).

The limiter decides *when* to lower (against the counters, atomically); this
module only answers "which limits fit" and builds the plan the gateway passes
to it: the bound (tightened by a recorded conversation prefix where one is
known) and how far it may be lowered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tokenfuse.limits.bounds import Bound, compute_bound
from tokenfuse.limits.prefix import PrefixBounds, conversation
from tokenfuse.pricing.price import Price
from tokenfuse.protocols.base import RequestInfo


@dataclass(frozen=True, slots=True)
class Fit:
    """How the output limit of one request may be lowered.

    ``lower`` is the policy: when False nothing is lowered, but refusals still
    say which limit would have fitted. ``floor`` is the smallest limit worth
    sending (``defaults.min_output_tokens``); never lowered below it.
    """

    info: RequestInfo
    price: Price
    input_tokens: int | None
    requested: int
    floor: int
    lower: bool

    def bound(self, max_tokens: int) -> Bound:
        lowered = None if max_tokens == self.requested else self.requested
        return compute_bound(
            self.info, self.price, input_tokens=self.input_tokens, max_tokens=max_tokens, lowered_from=lowered
        )

    def largest(self, fits: Callable[[Bound], bool], below: int) -> int:
        """The largest limit in [0, below] whose bound ``fits``; -1 when not even 0 does.

        A bound grows with the output limit in every dimension, so this is a
        binary search (about 16 bounds for a 64,000-token limit).
        """
        if below < 0 or not fits(self.bound(0)):
            return -1
        lo, hi = 0, below
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(self.bound(mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(frozen=True, slots=True)
class Plan:
    """What the gateway reserves for one request and what the limiter may do with it."""

    bound: Bound
    fit: Fit | None  # None for routes that generate nothing (no output limit to lower)
    remember: bytes | None  # the conversation key to record this request's exact input under


def plan(
    info: RequestInfo,
    price: Price,
    *,
    prefixes: PrefixBounds | None,
    scope: str,
    floor: int,
    lower: bool,
) -> Plan:
    """The bound of ``info`` (tightened by a known conversation prefix) and its fit."""
    conv = conversation(info, scope) if prefixes is not None else None
    input_tokens = prefixes.input_bound(conv) if prefixes is not None and conv is not None else None
    bound = compute_bound(info, price, input_tokens=input_tokens)
    fit = None
    if info.max_tokens is not None and info.max_tokens > 0:
        fit = Fit(info, price, input_tokens, info.max_tokens, floor, lower)
    return Plan(bound, fit, None if conv is None else conv.key)
