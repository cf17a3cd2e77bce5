"""The simulator's provider caching rules: minimums, lookups at breakpoints, lifetimes on its clock."""

from __future__ import annotations

from tokenfuse.simulator.tokens import TTL_1H, TTL_5M, Block, PromptCache, provider_marked_input


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_below_minimum_markers_are_ignored_and_no_caching_models_ignore_all() -> None:
    cache = PromptCache(Clock())
    blocks = [Block(b"s" * 400, TTL_5M), Block(b"q" * 40)]  # 100 tokens
    assert provider_marked_input("a", blocks, cache, 1024, per_segment=False).cache_write == 0
    assert provider_marked_input("a", [Block(b"s" * 8000, TTL_5M)], cache, None, per_segment=False).cache_write == 0


def test_reads_only_where_an_earlier_request_wrote_and_entries_expire() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    turn1 = [Block(b"s" * 8000), Block(b"u" * 400, TTL_5M)]
    first = provider_marked_input("a", turn1, cache, 1024, per_segment=False)
    assert first.cache_write == 2100 and first.cache_read == 0
    turn2 = [Block(b"s" * 8000), Block(b"u" * 400), Block(b"a" * 40), Block(b"v" * 400, TTL_5M)]
    second = provider_marked_input("a", turn2, cache, 1024, per_segment=False)
    assert second.cache_read == 2100 and second.cache_write == 110  # found by the lookback
    # The system block alone was never a breakpoint: nothing to read there.
    other = [Block(b"s" * 8000), Block(b"z" * 400, TTL_5M)]
    assert provider_marked_input("a", other, cache, 1024, per_segment=False).cache_read == 0
    clock.now += TTL_5M + 1
    assert provider_marked_input("a", turn2, cache, 1024, per_segment=False).cache_read == 0
    long = [Block(b"s" * 8000, TTL_1H)]
    provider_marked_input("b", long, cache, 1024, per_segment=False)
    clock.now += 3000
    assert provider_marked_input("b", long, cache, 1024, per_segment=False).cache_read == 2000


def test_bedrock_counts_the_minimum_per_segment() -> None:
    cache = PromptCache(Clock())
    blocks = [Block(b"s" * 8000, TTL_5M), Block(b"u" * 400, TTL_5M)]  # second segment: 100 tokens
    usage = provider_marked_input("c", blocks, cache, 1024, per_segment=True)
    assert usage.cache_write == 2000 and usage.input_uncached == 100
