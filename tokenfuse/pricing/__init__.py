"""Prices in USD per million tokens: bundled catalog, LiteLLM file, config overrides.

The gateway, limits and billing call exactly this surface::

    book = PriceBook.build(overrides=cfg.prices, litellm_file=cfg.pricing.file)
    price = book.require(model)       # UnpricedModel when nothing prices it
    cost = price.cost(usage)          # exact Decimal USD
"""

from tokenfuse.pricing.catalog import PriceBook, Resolution
from tokenfuse.pricing.price import Price, UnpricedModel

__all__ = ["Price", "PriceBook", "Resolution", "UnpricedModel"]
