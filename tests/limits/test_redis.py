"""Redis counters: replicas sharing one Redis, reservation TTLs, failure modes."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import unavailable
from tests.limits.conftest import bound, by_name, ctx, insert_rows, make_config
from tokenfuse.config import SessionCaps
from tokenfuse.limits.counters import Entry, Vec
from tokenfuse.limits.limiter import Limiter
from tokenfuse.limits.memory import MemoryCounters
from tokenfuse.limits.redis import RedisCounters
from tokenfuse.usage import Usage

CAP = {"name": "cap", "match": {"principal": "alice"}, "window": "day", "limit": {"usd": "1.00"}}


async def replica(tmp_path: Path, url: str, prefix: str, budgets: list[dict[str, Any]], **kw: Any) -> Limiter:
    cfg = make_config(budgets, counters=url, store=f"sqlite:///{tmp_path / 'ledger.db'}", **kw)
    return await Limiter.create(cfg, prefix=prefix)


async def test_two_replicas_never_exceed_a_shared_cap(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    a = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    b = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    rng = random.Random(3)
    served = Decimal(0)
    attempts = 400

    async def client(lim: Limiter) -> None:
        # A client sends its next request when the previous one is answered.
        nonlocal served, attempts
        while attempts > 0:
            attempts -= 1
            adm = await lim.reserve(ctx(), bound("0.01"))
            await asyncio.sleep(rng.random() / 500)
            if adm.ok:
                cost = Decimal("0.01") * Decimal(rng.randint(50, 100)) / 100
                served += cost
                await lim.settle(adm, Usage(output=1), cost)

    await asyncio.gather(*(client(a if i % 2 else b) for i in range(32)))
    sa, sb = by_name(await a.snapshot())["cap"], by_name(await b.snapshot())["cap"]
    assert sa.spent_usd == sb.spent_usd == served
    assert served <= Decimal("1.00")
    assert served >= Decimal("0.90")  # no needless refusals: only the last bound's worth is left unused
    assert sa.reserved_usd == 0
    await a.close()
    await b.close()


async def test_a_crashed_replicas_reservations_expire_into_charges(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    crashed = await replica(tmp_path, redis_url, redis_prefix, [CAP], reservation_ttl_s=5)
    survivor = await replica(tmp_path, redis_url, redis_prefix, [CAP], reservation_ttl_s=5)
    t = time.time()
    assert (await crashed.reserve(ctx(), bound("0.4"), now=t)).ok
    assert (await crashed.reserve(ctx(), bound("0.4"), now=t)).ok
    await crashed.close()  # dies without settling
    assert not (await survivor.reserve(ctx(), bound("0.3"), now=t + 4)).ok
    # Expired, the reservations no longer hold headroom as reservations, but the
    # provider may have billed those requests up to their bound: they are charged.
    s = by_name(await survivor.snapshot(now=t + 5))["cap"]
    assert (s.reserved_usd, s.reserved_requests) == (Decimal(0), 0)
    assert (s.spent_usd, s.spent_requests) == (Decimal("0.8"), 2)
    assert not (await survivor.reserve(ctx(), bound("0.3"), now=t + 5)).ok
    assert (await survivor.reserve(ctx(), bound("0.2"), now=t + 5)).ok
    await survivor.close()


async def test_a_late_settle_replaces_the_charge(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    lim = await replica(tmp_path, redis_url, redis_prefix, [CAP], reservation_ttl_s=5)
    t = time.time()
    slow = await lim.reserve(ctx(), bound("0.4"), now=t)
    unbilled = await lim.reserve(ctx(), bound("0.4"), now=t)
    assert by_name(await lim.snapshot(now=t + 6))["cap"].spent_usd == Decimal("0.8")
    await lim.settle(slow, Usage(output=1), Decimal("0.1"), now=t + 7)
    await lim.release(unbilled, now=t + 7)
    s = by_name(await lim.snapshot(now=t + 7))["cap"]
    assert (s.spent_usd, s.spent_requests, s.reserved_usd) == (Decimal("0.1"), 1, Decimal(0))
    await lim.close()


async def test_settle_release_and_exact_large_amounts(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    budgets = [{"name": "big", "window": "month", "limit": {"usd": 1_000_000}}]
    lim = await replica(tmp_path, redis_url, redis_prefix, budgets)
    a = await lim.reserve(ctx(), bound("123456.789012345"))
    b = await lim.reserve(ctx(), bound("1"))
    s = by_name(await lim.snapshot())["big"]
    assert s.reserved_usd == Decimal("123457.789012345") and s.reserved_requests == 2
    usage = Usage(input_uncached=1, cache_read=2, cache_write=3, cache_write_1h=4, output=5)
    await lim.settle(a, usage, Decimal("234567.8901234567"))
    await lim.release(b)
    s = by_name(await lim.snapshot())["big"]
    assert s.spent_usd == Decimal("234567.890123457")  # rounded up to the nano-dollar
    assert s.spent_requests == 1
    assert s.spent_tokens == {
        "input_uncached": 1,
        "cache_read": 2,
        "cache_write": 7,
        "output": 5,
        "total": 15,
    }
    assert s.reserved_usd == 0 and s.reserved_requests == 0
    await lim.close()


async def test_all_or_none_and_refusal_figures(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    budgets = [
        {"name": "roomy", "window": "day", "limit": {"usd": 100}},
        {"name": "tokens", "window": "hour", "limit": {"tokens": {"output": 150}}},
    ]
    lim = await replica(tmp_path, redis_url, redis_prefix, budgets)
    assert (await lim.reserve(ctx(), bound("1", output=100))).ok
    r = (await lim.reserve(ctx(), bound("1", output=100))).refusal
    assert r is not None and (r.budget, r.limit, r.reserved, r.requested) == (
        "tokens",
        "150 output tokens",
        "100 output tokens",
        "100 output tokens",
    )
    assert by_name(await lim.snapshot())["roomy"].reserved_requests == 1
    await lim.close()


async def test_rolling_window_in_redis(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    lim = await replica(
        tmp_path, redis_url, redis_prefix, [{"name": "r", "window": "rolling: 1h", "limit": {"requests": 1}}]
    )
    t = time.time()
    a = await lim.reserve(ctx(), bound(), now=t)
    await lim.settle(a, Usage(output=1), Decimal("0.001"), now=t)
    assert not (await lim.reserve(ctx(), bound(), now=t + 3000)).ok
    assert (await lim.reserve(ctx(), bound(), now=t + 3600 + 61)).ok
    await lim.close()


async def test_counter_keys_expire_after_their_window(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    lim = await replica(
        tmp_path, redis_url, redis_prefix, [{"name": "m", "window": "minute", "limit": {"requests": 5}}]
    )
    a = await lim.reserve(ctx(), bound())
    await lim.settle(a, Usage(output=1), Decimal("0.001"))
    client = redis.Redis.from_url(redis_url)
    keys = [k for k in client.scan_iter(match=f"{redis_prefix}:b:*")]
    assert len(keys) == 1
    ttl_ms = int(client.pttl(keys[0]))
    assert 0 < ttl_ms <= (60 + 3600) * 1000
    client.close()
    await lim.close()


async def test_session_caps_hold_across_replicas(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    a = await replica(tmp_path, redis_url, redis_prefix, [])
    b = await replica(tmp_path, redis_url, redis_prefix, [])
    caps = SessionCaps(max_requests=3)
    for lim in (a, b, a):
        adm = await lim.reserve(ctx(session="agent-9"), bound(), session_caps=caps)
        assert adm.ok
        await lim.settle(adm, Usage(output=1), Decimal("0.01"))
    r = (await b.reserve(ctx(session="agent-9"), bound(), session_caps=caps)).refusal
    assert r is not None and r.kind == "session_cap"
    rows = await b.session_snapshot()
    assert rows[0]["session"] == "agent-9" and rows[0]["requests"] == 3 and rows[0]["max_requests"] == 3
    await a.close()
    await b.close()


async def test_concurrent_replicas_rebuild_from_the_ledger_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    now = time.time()
    insert_rows(
        store, [{"ts": now - 1, "principal": "alice", "cost_usd": "0.30", "output": 10} for _ in range(2)]
    )
    a, b = await asyncio.gather(
        replica(tmp_path, redis_url, redis_prefix, [CAP]), replica(tmp_path, redis_url, redis_prefix, [CAP])
    )
    s = by_name(await a.snapshot())["cap"]
    assert (s.spent_usd, s.spent_requests) == (Decimal("0.6"), 2)
    adm = await b.reserve(ctx(), bound("0.30"))
    await b.settle(adm, Usage(output=1), Decimal("0.30"))
    # A replica restarting now must not load the ledger again on top.
    c = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    assert by_name(await c.snapshot())["cap"].spent_usd == Decimal("0.9")
    assert not (await c.reserve(ctx(), bound("0.2"))).ok
    for lim in (a, b, c):
        await lim.close()


async def test_unreachable_redis_fails_closed(tmp_path: Path) -> None:
    lim = await replica(tmp_path, "redis://:hunter2@127.0.0.1:9/0", "x", [CAP])
    adm = await lim.reserve(ctx(), bound("0.01"))
    assert not adm.ok and adm.refusal is not None
    assert adm.refusal.kind == "counters_unavailable" and adm.refusal.budget == "cap"
    assert "127.0.0.1:9" in adm.refusal.message and "hunter2" not in adm.refusal.message
    # Requests no budget applies to are not refused.
    assert (await lim.reserve(ctx(principal="bob"), bound("0.01"))).ok
    await lim.close()


async def test_unreachable_redis_fails_open_to_local_counters(tmp_path: Path) -> None:
    lim = await replica(tmp_path, "redis://127.0.0.1:9/0", "x", [CAP], on_counter_failure="open")
    adm = await lim.reserve(ctx(), bound("0.6"))
    assert adm.ok
    await lim.settle(adm, Usage(output=1), Decimal("0.5"))
    # The local fallback still enforces the cap within this process.
    assert not (await lim.reserve(ctx(), bound("0.6"))).ok
    assert by_name(await lim.snapshot())["cap"].spent_usd == Decimal("0.5")
    await lim.close()


async def test_a_burst_of_1000_across_two_replicas_stays_under_the_cap(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    a = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    b = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    rng = random.Random(11)

    async def one(lim: Limiter) -> None:
        adm = await lim.reserve(ctx(), bound("0.003"))
        await asyncio.sleep(rng.random() / 100)
        if adm.ok:
            await lim.settle(adm, Usage(output=1), Decimal("0.003"))

    await asyncio.gather(*(one(a if i % 2 else b) for i in range(1000)))
    s = by_name(await a.snapshot())["cap"]
    assert s.spent_usd <= Decimal("1.00") and s.reserved_usd == 0
    assert s.spent_requests == 333
    await a.close()
    await b.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    client.close()
    return proc


async def test_an_outage_refuses_then_recovers_and_replays_usage(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary", "not on PATH")
    port = _free_port()
    proc = _start_redis(port)
    try:
        lim = await replica(tmp_path, f"redis://127.0.0.1:{port}/0", "outage", [CAP])
        t = time.time()
        held = await lim.reserve(ctx(), bound("0.5"), now=t)
        assert held.ok
        proc.terminate()
        proc.wait()
        # Usage of a request in flight when Redis went away is kept for later.
        await lim.settle(held, Usage(output=1), Decimal("0.4"), now=t + 0.1)
        down = await lim.reserve(ctx(), bound("0.1"), now=t + 0.2)
        assert down.refusal is not None and down.refusal.kind == "counters_unavailable"
        assert "redis://127.0.0.1" in down.refusal.message
        proc = _start_redis(port)  # back, but empty: it kept nothing on disk
        back = await lim.reserve(ctx(), bound("0.1"), now=t + 2)
        assert back.ok
        await asyncio.sleep(0.05)  # let the replay task run
        s = by_name(await lim.snapshot(now=t + 2))["cap"]
        assert s.spent_usd == Decimal("0.4") and s.reserved_usd == Decimal("0.1")
        await lim.close()
    finally:
        proc.terminate()
        proc.wait()


# The Lua scripts and the in-process backend implement one contract; driven by
# the same random operations they must agree on every figure.
_T0 = 1_900_000_000.0
_ENTRIES = (
    Entry("b:fixed:1", (5_000, 6, -1, -1, -1, 400, -1), expire_at=_T0 + 10**6),
    Entry("b:roll:r", (8_000, 10, -1, -1, -1, -1, -1), rolling_bucket_s=60, rolling_buckets=10, idle_s=10**6),
    # Idle expiry is Redis's own key TTL, in real time; keep it out of simulated time.
    Entry("s:agent", (-1, 4, -1, -1, -1, -1, -1), idle_s=10**6, keep_limits=True),
)
_op = st.one_of(
    st.tuples(
        st.just("reserve"),
        st.lists(st.sampled_from(range(3)), min_size=1, max_size=3, unique=True),
        st.integers(0, 3_000),
        st.integers(0, 200),
    ),
    st.tuples(st.just("settle"), st.integers(0, 30), st.integers(0, 3_000), st.integers(0, 200)),
    st.tuples(st.just("release"), st.integers(0, 30), st.just(0), st.just(0)),
    st.tuples(st.just("wait"), st.integers(1, 400), st.just(0), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=30))
def test_redis_and_memory_backends_agree(redis_url: str, ops: list[tuple[Any, ...]]) -> None:
    async def run() -> None:
        mem = MemoryCounters()
        red = RedisCounters(redis_url, prefix=f"tftest:{uuid.uuid4().hex[:12]}")
        now = _T0
        held: dict[int, tuple[tuple[Entry, ...], Vec]] = {}
        try:
            for n, (kind, a, b, c) in enumerate(ops):
                if kind == "reserve":
                    entries = tuple(_ENTRIES[i] for i in a)
                    amount: Vec = (b, 1, 0, 0, 0, c, 0)
                    want = mem.reserve_now(entries, str(n), amount, now, 300)
                    got = await red.reserve(entries, str(n), amount, now, 300)
                    assert got == want
                    if want is None:
                        held[n] = (entries, amount)
                elif kind in ("settle", "release") and held:
                    rid = sorted(held)[a % len(held)]
                    entries, amount = held.pop(rid)
                    actual: Vec = (b, 1, 0, 0, 0, c, 0) if kind == "settle" else (0,) * 7
                    mem.settle_now(entries, str(rid), actual, now, False)
                    await red.settle(entries, str(rid), actual, now, False, amount)
                elif kind == "wait":
                    now += a
                assert await red.read(_ENTRIES, now) == await mem.read(_ENTRIES, now)
        finally:
            await red.flush_prefix()
            await red.close()

    asyncio.run(run())
