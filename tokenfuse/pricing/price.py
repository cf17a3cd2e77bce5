"""One model's prices and the exact cost of a `Usage` at those prices."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from tokenfuse.usage import Usage

PRICE_FIELDS: tuple[str, ...] = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. ``None`` means the model has no such token class.

    A token class the model does not price is billed at the input rate: the
    provider would have billed those tokens as ordinary input, and pricing them
    at zero would let an unexpected usage figure slip past a budget.
    """

    model: str
    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    # Some models bill a whole request at higher rates once its input (cache
    # reads and writes included) exceeds a threshold: Claude Sonnet 4/4.5 with
    # the 1M-token context window above 200K input tokens.
    long_context_threshold: int | None = None
    long_context: Price | None = None

    @property
    def supports_cache(self) -> bool:
        return self.cache_read is not None or self.cache_write is not None or self.cache_write_1h is not None

    def rate(self, token_class: str) -> Decimal:
        """The per-million rate a token of ``token_class`` is billed at."""
        if token_class == "input_uncached" or token_class == "input":
            return self.input
        if token_class == "output":
            return self.output
        if token_class in ("cache_read", "cache_write", "cache_write_1h"):
            value: Decimal | None = getattr(self, token_class)
            return self.input if value is None else value
        raise KeyError(f"unknown token class {token_class!r}")

    def tier_for(self, input_tokens: int) -> Price:
        """The rates a request with this many input tokens (all classes) is billed at."""
        if self.long_context is not None and self.long_context_threshold is not None:
            if input_tokens > self.long_context_threshold:
                return self.long_context
        return self

    def cost(self, usage: Usage) -> Decimal:
        """Exact USD cost; no rounding (scaleb shifts the exponent, it never rounds)."""
        tier = self.tier_for(usage.input_total)
        if tier is not self:
            return tier.cost(usage)
        total = (
            usage.input_uncached * self.input
            + usage.cache_read * self.rate("cache_read")
            + usage.cache_write * self.rate("cache_write")
            + usage.cache_write_1h * self.rate("cache_write_1h")
            + usage.output * self.output
        )
        return total.scaleb(-6)

    def dearest_input_rate(self, cache_1h: bool, input_tokens: int | None = None) -> Decimal:
        """The highest per-million rate any input token of a request can be billed at.

        Pass ``input_tokens`` (all input classes) to include a long-context tier
        the request would fall into; without it the standard tier is assumed.
        """
        if input_tokens is not None and (tier := self.tier_for(input_tokens)) is not self:
            return tier.dearest_input_rate(cache_1h)
        rates = [self.input, self.rate("cache_write")]
        if cache_1h:
            rates.append(self.rate("cache_write_1h"))
        return max(rates)

    def scaled(self, factor: Decimal, model: str | None = None) -> Price:
        """Every rate multiplied by ``factor`` (a regional premium, say)."""

        def mul(value: Decimal | None) -> Decimal | None:
            return None if value is None else value * factor

        return Price(
            model=self.model if model is None else model,
            input=self.input * factor,
            output=self.output * factor,
            cache_read=mul(self.cache_read),
            cache_write=mul(self.cache_write),
            cache_write_1h=mul(self.cache_write_1h),
            long_context_threshold=self.long_context_threshold,
            long_context=None if self.long_context is None else self.long_context.scaled(factor, model),
        )

    def as_dict(self) -> dict[str, str | None]:
        """Rates as plain decimal strings (no exponent), for JSON output."""
        return {name: None if (v := getattr(self, name)) is None else plain(v) for name in PRICE_FIELDS}


def plain(value: Decimal) -> str:
    """A decimal string without exponent or trailing zeros: 3.75, 0.000000075."""
    return format(value.normalize(), "f")


class UnpricedModel(LookupError):
    """A model the price book cannot price; the gateway refuses it (fail closed)."""

    def __init__(self, model: str, suggestions: tuple[str, ...] = ()) -> None:
        self.model = model
        self.suggestions = suggestions
        hint = f" Close matches: {', '.join(suggestions)}." if suggestions else ""
        super().__init__(
            f"no price is known for model {model!r}.{hint} Add it under `prices:` in the config "
            f"(input/output USD per million tokens), load a LiteLLM price file with `pricing: {{file: ...}}`, "
            f"or set `pricing: {{allow_unpriced: true}}` to let unpriced models through."
        )
