"""The upper bound of what one request can cost, computed before it is sent.

Why each figure is a true bound is argued in docs/limits.md. In short: a
request cannot bill more input tokens than ``prompt_bytes`` (the protocol
layer's bound), more output tokens than ``max_tokens`` (the gateway always sets
one) for each of the ``choices`` completions it asks for (input is billed
once, however many choices), and no input token is billed above the dearest input rate that can apply.
A request that continues a recorded conversation may pass a tighter input
bound (``input_tokens``, from ``prefix.py``); a request fitted to a budget is
bounded at the lowered output limit it is forwarded with (``max_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tokenfuse.pricing.price import Price
from tokenfuse.protocols.base import RequestInfo


@dataclass(frozen=True, slots=True)
class Bound:
    usd: Decimal  # upper bound of what the provider can bill for this request
    tokens: dict[str, int]  # per limit class: input_uncached, cache_read, cache_write, output, total
    # The output limit this bound assumes, and the client's own when the gateway lowered it to fit.
    max_tokens: int | None = None
    lowered_from: int | None = None


def input_rate_bound(info: RequestInfo, price: Price) -> Decimal:
    """The dearest per-million rate any input token of this request can be billed at."""
    if info.cache_writes_possible:
        return price.dearest_input_rate(info.cache_1h)
    # Without cache writes a token is billed as uncached input or as a cache
    # read; a catalog where reads cost more than input is wrong, but cheap to honour.
    return max(price.input, price.rate("cache_read"))


def compute_bound(
    info: RequestInfo,
    price: Price,
    *,
    input_tokens: int | None = None,
    max_tokens: int | None = None,
    lowered_from: int | None = None,
) -> Bound:
    """The bound of ``info`` as sent, or with ``max_tokens`` in place of its output limit.

    ``input_tokens`` replaces the byte bound of the input only when smaller:
    it must itself be a true bound (docs/limits.md, "Continuing a conversation").
    """
    max_in = max(0, info.prompt_bytes)
    if input_tokens is not None:
        max_in = min(max_in, max(0, input_tokens))
    limit = info.max_tokens if max_tokens is None else max_tokens
    max_out = max(0, limit or 0) * max(1, info.choices)
    # Long-context tiers bill the whole request at higher rates once the input
    # passes a threshold; the bound must use the tier its largest input would hit.
    price = price.tier_for(max_in)
    usd = (max_in * input_rate_bound(info, price) + max_out * price.output).scaleb(-6)
    tokens = {
        "input_uncached": max_in,
        "cache_read": max_in,
        "cache_write": max_in if info.cache_writes_possible else 0,
        "output": max_out,
        "total": max_in + max_out,
    }
    return Bound(usd=usd, tokens=tokens, max_tokens=limit, lowered_from=lowered_from)
