from __future__ import annotations

import pytest

from tokenfuse.pricing.lru import LRU


def test_evicts_the_least_recently_used() -> None:
    cache: LRU[str, int | None] = LRU(2)
    cache.put("a", 1)
    cache.put("b", None)  # None is a value, not a miss
    assert cache["a"] == 1  # a is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and "a" in cache and "c" in cache
    with pytest.raises(KeyError):
        cache["b"]
    assert len(cache) == 2


def test_replacing_a_key_does_not_grow_it() -> None:
    cache: LRU[str, int] = LRU(3)
    for i in range(10):
        cache.put("k", i)
    assert len(cache) == 1 and cache["k"] == 9


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        LRU(0)
