"""The in-process counter backend."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from tokenfuse.limits.counters import NDIMS, UNLIMITED, Entry, Seed
from tokenfuse.limits.memory import MemoryCounters

NONE = (UNLIMITED,) * NDIMS
NOW = 1_800_000_000.0


def lim(usd: int = UNLIMITED, requests: int = UNLIMITED) -> tuple[int, ...]:
    return (usd, requests, *NONE[2:])


def amt(usd: int, requests: int = 1) -> tuple[int, ...]:
    return (usd, requests, 0, 0, 0, 0, 0)


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_reserve_is_all_or_none() -> None:
    m = MemoryCounters()
    roomy, tight = Entry("a", lim(usd=100)), Entry("b", lim(usd=10))
    short = m.reserve_now([roomy, tight], "r1", amt(11), NOW, 60)
    assert short is not None and (short.index, short.dim) == (1, 0)
    readings = run(m.read([roomy, tight], NOW))
    assert [r.reserved for r in readings] == [(0,) * NDIMS, (0,) * NDIMS]
    assert m.reserve_now([roomy, tight], "r2", amt(10), NOW, 60) is None
    assert [r.reserved[0] for r in run(m.read([roomy, tight], NOW))] == [10, 10]


def test_settle_replaces_the_reservation_and_release_drops_it() -> None:
    m = MemoryCounters()
    e = Entry("a", lim(usd=100))
    m.reserve_now([e], "r1", amt(50), NOW, 60)
    m.reserve_now([e], "r2", amt(30), NOW, 60)
    m.settle_now([e], "r1", amt(7), NOW, False)
    m.settle_now([e], "r2", (0,) * NDIMS, NOW, False)
    r = run(m.read([e], NOW))[0]
    assert r.spent[:2] == (7, 1) and r.reserved[:2] == (0, 0)


def test_expired_reservations_are_charged_until_a_late_settle_corrects_them() -> None:
    m = MemoryCounters()
    e = Entry("a", lim(usd=100, requests=3))
    assert m.reserve_now([e], "crashed", amt(60), NOW, 5) is None
    assert m.reserve_now([e], "next", amt(50), NOW + 4, 5) is not None
    # Expired: no longer reserved, but charged as spent (it may have been billed).
    r = run(m.read([e], NOW + 5))[0]
    assert (r.spent[:2], r.reserved[:2]) == ((60, 1), (0, 0))
    assert m.reserve_now([e], "next", amt(50), NOW + 5, 5) is not None
    assert m.reserve_now([e], "small", amt(40), NOW + 5, 5) is None
    # A late settle replaces the charge by the actual usage; a late release removes it.
    m.settle_now([e], "crashed", amt(3), NOW + 6, False)
    assert run(m.read([e], NOW + 6))[0].spent[:2] == (3, 1)
    m.settle_now([e], "small", (0,) * NDIMS, NOW + 20, False)
    r = run(m.read([e], NOW + 20))[0]
    assert (r.spent[:2], r.reserved[:2]) == ((3, 1), (0, 0))


def test_rolling_buckets_age_out() -> None:
    m = MemoryCounters()
    e = Entry("r", lim(requests=2), rolling_bucket_s=60, rolling_buckets=60, idle_s=7200)
    for t in (NOW, NOW + 600):
        assert m.reserve_now([e], f"r{t}", amt(0), t, 60) is None
        m.settle_now([e], f"r{t}", amt(0), t, False)
    assert m.reserve_now([e], "x", amt(0), NOW + 1200, 60) is not None
    # An hour and a bucket after the first request it has left the window; the second has not.
    later = NOW + 3600 + 61
    assert run(m.read([e], later))[0].spent[1] == 1
    assert m.reserve_now([e], "y", amt(0), later, 60) is None


def test_calendar_counters_vanish_after_their_window_and_sessions_after_idling() -> None:
    m = MemoryCounters()
    win = Entry("w", lim(requests=1), expire_at=NOW + 10)
    sess = Entry("s:abc", lim(requests=1), idle_s=30, keep_limits=True)
    m.reserve_now([win, sess], "r", amt(0), NOW, 60)
    m.settle_now([win, sess], "r", amt(0), NOW, False)
    assert m.reserve_now([sess], "r2", amt(0), NOW + 29, 60) is not None
    assert run(m.read([win], NOW + 10))[0].spent[1] == 0
    assert m.reserve_now([sess], "r3", amt(0), NOW + 31, 60) is None


def test_seed_only_fills_absent_counters() -> None:
    m = MemoryCounters()
    e = Entry("a", lim(usd=100))
    assert run(m.seed([Seed(e, {0: amt(40, 4)})], NOW)) == 1
    assert run(m.seed([Seed(e, {0: amt(40, 4)})], NOW)) == 0
    assert run(m.read([e], NOW))[0].spent[:2] == (40, 4)
    assert m.reserve_now([e], "r", amt(61), NOW, 60) is not None


def test_sessions_listing() -> None:
    m = MemoryCounters()
    s = Entry("s:abc", lim(requests=5), idle_s=30, keep_limits=True)
    m.reserve_now([s], "r", amt(2), NOW, 60)
    found = run(m.sessions(NOW))
    assert [(x.session, x.reserved[1], x.limits[1], x.expires_at) for x in found] == [("abc", 1, 5, NOW + 30)]
