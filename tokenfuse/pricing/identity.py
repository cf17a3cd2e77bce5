"""One identity per model, whatever spelling a client sends.

Budgets, kill switches, routing and the ledger compare `canonical_model`
forms, never raw strings, so ``CLAUDE-OPUS-4-6``, ``claude-opus-4-6 ``,
``us.anthropic.claude-opus-4-6-v1`` and its ARNs are one model to all of
them, exactly as they are one price to pricing.

The identity is the bundled-catalog key the name resolves to (aliases
included), else the name with every known decoration removed (see
`names.reduce_name`). It deliberately ignores config overrides and LiteLLM
files: those hold decorated keys of their own (``us.anthropic.…-v1``) that
would split one model into several identities, and the CLI, reports and every
replica must agree on an identity without loading the gateway's price book.
"""

from __future__ import annotations

from tokenfuse.pricing.catalog import PriceBook
from tokenfuse.pricing.names import MAX_MODEL_NAME, is_glob, reduce_pattern

__all__ = ["MAX_MODEL_NAME", "canonical_model", "canonical_pattern", "is_glob"]


def canonical_model(raw: str, prices: PriceBook | None = None) -> str:
    """The identity of a requested model string; cached per price book in a bounded LRU."""
    return (prices or PriceBook.default()).canonical(raw)


def canonical_pattern(pattern: str, prices: PriceBook | None = None) -> str:
    """A configured model name or glob, in the form it is matched against `canonical_model` ids.

    A plain name is canonicalised like a request; a glob is lower-cased and
    loses the decorations visible at its head (`names.reduce_pattern`).
    """
    if is_glob(pattern):
        return reduce_pattern(pattern)
    return canonical_model(pattern, prices)
