from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tokenfuse.simulator.tokens import (
    TTL_1H,
    TTL_5M,
    Block,
    PromptCache,
    automatic_input,
    count_bytes,
    generated_text,
    marked_input,
    prompt_tokens,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_round_up_and_prompts_are_never_empty() -> None:
    assert [count_bytes(n) for n in (0, 1, 4, 5, 8)] == [0, 1, 1, 2, 2]
    assert prompt_tokens(0) == 1
    assert prompt_tokens(9) == 3


@given(st.integers(min_value=0, max_value=70_000))
def test_generated_text_is_four_ascii_bytes_per_token(tokens: int) -> None:
    text = generated_text(tokens)
    assert len(text.encode()) == 4 * tokens
    assert text.isascii()


@given(st.text(max_size=300))
def test_prompt_tokens_never_exceed_prompt_bytes(text: str) -> None:
    size = len(text.encode())
    assert prompt_tokens(size) <= max(1, size)


def test_unmarked_prompt_is_all_uncached() -> None:
    usage = marked_input("m", [Block(b"a" * 40), Block(b"b" * 3)], PromptCache())
    assert usage.as_dict() == {
        "input_uncached": 11,
        "cache_read": 0,
        "cache_write": 0,
        "cache_write_1h": 0,
        "output": 0,
    }


def test_marked_prefix_is_written_once_then_read() -> None:
    cache = PromptCache()
    blocks = [Block(b"s" * 400, TTL_5M), Block(b"q" * 40)]
    first = marked_input("m", blocks, cache)
    second = marked_input("m", blocks, cache)
    assert (first.cache_write, first.cache_read, first.input_uncached) == (100, 0, 10)
    assert (second.cache_write, second.cache_read, second.input_uncached) == (0, 100, 10)


def test_cache_is_keyed_by_namespace() -> None:
    cache = PromptCache()
    blocks = [Block(b"s" * 400, TTL_5M)]
    marked_input("model-a", blocks, cache)
    assert marked_input("model-b", blocks, cache).cache_write == 100


def test_one_hour_marker_writes_the_one_hour_class() -> None:
    usage = marked_input("m", [Block(b"s" * 400, TTL_1H), Block(b"q" * 8)], PromptCache())
    assert (usage.cache_write_1h, usage.cache_write, usage.input_uncached) == (100, 0, 2)


def test_mixed_ttls_split_the_write_by_marker() -> None:
    blocks = [Block(b"t" * 400, TTL_1H), Block(b"s" * 80, TTL_5M), Block(b"q" * 4)]
    usage = marked_input("m", blocks, PromptCache())
    assert (usage.cache_write_1h, usage.cache_write, usage.input_uncached) == (100, 20, 1)


def test_entries_expire_after_their_ttl_and_reads_refresh_them() -> None:
    clock = Clock()
    cache = PromptCache(clock)
    blocks = [Block(b"s" * 400, TTL_5M)]
    marked_input("m", blocks, cache)
    clock.now += TTL_5M - 1
    assert marked_input("m", blocks, cache).cache_read == 100  # refreshes
    clock.now += TTL_5M - 1
    assert marked_input("m", blocks, cache).cache_read == 100
    clock.now += TTL_5M + 1
    assert marked_input("m", blocks, cache).cache_write == 100


def test_growing_conversation_reads_the_old_prefix_and_writes_the_new_part() -> None:
    cache = PromptCache()
    turn1 = [Block(b"S" * 800, TTL_5M), Block(b"u1" * 100, TTL_5M)]
    marked_input("m", turn1, cache)
    # The marker moved to the newest message, as agents do.
    turn2 = [Block(b"S" * 800, TTL_5M), Block(b"u1" * 100), Block(b"a1" * 50), Block(b"u2" * 50, TTL_5M)]
    usage = marked_input("m", turn2, cache)
    assert usage.cache_read == 250
    assert usage.cache_write == 50
    assert usage.input_uncached == 0
    assert usage.input_total == prompt_tokens(800 + 200 + 100 + 100)


@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=600), st.sampled_from([None, TTL_5M, TTL_1H])),
        min_size=1,
        max_size=8,
    )
)
def test_classes_always_add_up_to_the_prompt(spec: list[tuple[int, float | None]]) -> None:
    blocks = [Block(b"x" * n, marker) for n, marker in spec]
    cache = PromptCache()
    total = prompt_tokens(sum(n for n, _ in spec))
    for _ in range(2):
        usage = marked_input("m", blocks, cache)
        assert min(usage.input_uncached, usage.cache_read, usage.cache_write, usage.cache_write_1h) >= 0
        assert usage.input_total == total


def test_openai_short_prompts_are_never_cached() -> None:
    cache = PromptCache()
    text = b"x" * (4 * 1023)
    automatic_input("m", text, cache)
    assert automatic_input("m", text, cache).cache_read == 0


def test_openai_repeat_is_cached_in_128_token_steps() -> None:
    cache = PromptCache()
    text = b"x" * (4 * 1300)
    first = automatic_input("m", text, cache)
    second = automatic_input("m", text, cache)
    assert (first.input_uncached, first.cache_read) == (1300, 0)
    assert (second.input_uncached, second.cache_read) == (1300 - 1280, 1280)


def test_openai_extended_prompt_reads_the_shared_prefix() -> None:
    cache = PromptCache()
    base = bytes(range(256)) * 20  # 5120 bytes = 1280 tokens
    automatic_input("m", base, cache)
    usage = automatic_input("m", base + b"more text" * 100, cache)
    assert usage.cache_read == 1280
    changed = automatic_input("m", b"Z" + base[1:], cache)
    assert changed.cache_read == 0


def test_cache_limit_evicts_old_entries() -> None:
    cache = PromptCache(limit=20)
    for i in range(50):
        marked_input(f"m{i}", [Block(b"x" * 8, TTL_5M)], cache)
    assert len(cache) <= 20
