"""Prices in USD per million tokens: bundled catalog, LiteLLM file, config overrides.

The gateway, limits and billing call exactly this surface::

    book = PriceBook.build(overrides=cfg.prices, litellm_file=cfg.pricing.file)
    price = book.require(model)       # UnpricedModel when nothing prices it
    cost = price.cost(usage)          # exact Decimal USD
    ident = canonical_model(model, book)  # what budgets, kill switches and routing compare
"""

from tokenfuse.pricing.catalog import PriceBook, Resolution
from tokenfuse.pricing.identity import MAX_MODEL_NAME, canonical_model, canonical_pattern
from tokenfuse.pricing.price import Price, UnpricedModel

__all__ = [
    "MAX_MODEL_NAME",
    "Price",
    "PriceBook",
    "Resolution",
    "UnpricedModel",
    "canonical_model",
    "canonical_pattern",
]
