"""The one record of what a request consumed, by token class.

Every protocol's usage is normalised into this shape so that pricing, limits,
the ledger and billing reconciliation all speak the same five names.
"""

from __future__ import annotations

from dataclasses import dataclass

# cache_write is the 5-minute write; cache_write_1h is kept apart because
# Anthropic bills it at a different rate. Reports that show one "cache_write"
# figure add the two.
TOKEN_CLASSES: tuple[str, ...] = ("input_uncached", "cache_read", "cache_write", "cache_write_1h", "output")


@dataclass(slots=True)
class Usage:
    input_uncached: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    output: int = 0
    # True when any figure was estimated (a stream that ended before the
    # provider reported usage) rather than read from the provider.
    estimated: bool = False

    @property
    def input_total(self) -> int:
        return self.input_uncached + self.cache_read + self.cache_write + self.cache_write_1h

    @property
    def cache_write_all(self) -> int:
        return self.cache_write + self.cache_write_1h

    @property
    def total(self) -> int:
        return self.input_total + self.output

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input_uncached + other.input_uncached,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
            self.cache_write_1h + other.cache_write_1h,
            self.output + other.output,
            self.estimated or other.estimated,
        )

    def as_dict(self) -> dict[str, int]:
        return {
            "input_uncached": self.input_uncached,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "cache_write_1h": self.cache_write_1h,
            "output": self.output,
        }
