"""Estimated token counts, for streams that end before the provider reports usage.

Rule: one token per four UTF-8 bytes of text, rounded up. Four bytes per token
is the usual figure for English with BPE tokenizers; code and non-Latin text
run denser (more tokens per byte), so the figure is a marked estimate, never a
bound. Every usage built from it carries ``estimated=True``.
"""

from __future__ import annotations

BYTES_PER_TOKEN = 4


def tokens_from_bytes(n: int) -> int:
    """ceil(n / 4) for n >= 0."""
    if n <= 0:
        return 0
    return -(-n // BYTES_PER_TOKEN)
