"""Prices from a LiteLLM-format ``model_prices_and_context_window.json`` given by path.

LiteLLM stores USD per *token* as JSON floats (``3e-06``). The file is parsed
with ``parse_float=Decimal`` so no float ever exists, and rates are shifted to
per million with ``scaleb`` (exact).

Field mapping: ``input_cost_per_token`` -> input, ``output_cost_per_token`` ->
output, ``cache_read_input_token_cost`` -> cache_read,
``cache_creation_input_token_cost`` -> cache_write (5-minute),
``cache_creation_input_token_cost_above_1hr`` -> cache_write_1h.
Entries without an input price (image, audio, per-second models) are skipped,
as are entries whose numbers are unusable; the file is third-party data and one
odd row must not stop the gateway from starting.
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any

from tokenfuse.pricing.price import Price

_FIELDS: dict[str, str] = {
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
}
_NO_OUTPUT_MODES = frozenset({"embedding", "moderation", "rerank"})
# LiteLLM's names for the long-context tier (Claude Sonnet 4/4.5 above 200K input tokens).
_LONG_THRESHOLD = 200_000
_LONG_FIELDS: dict[str, str] = {
    "input": "input_cost_per_token_above_200k_tokens",
    "output": "output_cost_per_token_above_200k_tokens",
    "cache_read": "cache_read_input_token_cost_above_200k_tokens",
    "cache_write": "cache_creation_input_token_cost_above_200k_tokens",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr_above_200k_tokens",
}


def load_litellm(path: str) -> dict[str, Price]:
    fix = "set `pricing: {file: ...}` to a LiteLLM model_prices_and_context_window.json"
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f, parse_float=Decimal, parse_int=Decimal)
    except FileNotFoundError:
        raise ValueError(f"pricing.file: {path}: no such file; {fix}") from None
    except OSError as exc:
        raise ValueError(f"pricing.file: {path}: cannot read ({exc.strerror}); {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"pricing.file: {path}: not valid JSON ({exc}); {fix}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"pricing.file: {path}: expected a JSON object keyed by model name; {fix}")
    return parse_litellm(doc)


def parse_litellm(doc: dict[str, Any]) -> dict[str, Price]:
    prices: dict[str, Price] = {}
    for model, spec in doc.items():
        if model == "sample_spec" or not isinstance(spec, dict):
            continue
        price = _entry(model, spec)
        if price is not None:
            prices[model] = price
    return prices


def _per_million(value: object) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        return None
    return value.scaleb(6)


def _entry(model: str, spec: dict[str, Any]) -> Price | None:
    input_ = _per_million(spec.get("input_cost_per_token"))
    if input_ is None:
        return None
    raw_output = spec.get("output_cost_per_token")
    if raw_output is None and spec.get("mode") in _NO_OUTPUT_MODES:
        output: Decimal | None = Decimal(0)
    else:
        output = _per_million(raw_output)
    if output is None:
        return None
    optional = _optional(spec, _FIELDS)
    if optional is None:
        return None
    price = Price(
        model=model,
        input=input_,
        output=output,
        cache_read=optional["cache_read"],
        cache_write=optional["cache_write"],
        cache_write_1h=optional["cache_write_1h"],
    )
    long = _optional(spec, _LONG_FIELDS)
    if long is None:
        return None
    long_input, long_output = long["input"], long["output"]
    if long_input is None or long_output is None:
        return price
    tier = Price(
        model=model,
        input=long_input,
        output=long_output,
        cache_read=long["cache_read"],
        cache_write=long["cache_write"],
        cache_write_1h=long["cache_write_1h"],
    )
    return dataclasses.replace(price, long_context_threshold=_LONG_THRESHOLD, long_context=tier)


def _optional(spec: dict[str, Any], fields: dict[str, str]) -> dict[str, Decimal | None] | None:
    """Per-million values for ``fields``; None when a present value is unusable."""
    out: dict[str, Decimal | None] = {}
    for ours, theirs in fields.items():
        raw = spec.get(theirs)
        value = None if raw is None else _per_million(raw)
        if raw is not None and value is None:
            return None
        out[ours] = value
    return out
