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
from tokenfuse.limits.counters import CountersLost, Entry, Vec
from tokenfuse.limits.limiter import Limiter
from tokenfuse.limits.memory import MemoryCounters
from tokenfuse.limits.redis import RedisCounters
from tokenfuse.usage import Usage

CAP = {"name": "cap", "match": {"principal": "alice"}, "window": "day", "limit": {"usd": "1.00"}}


async def replica(tmp_path: Path, url: str, prefix: str, budgets: list[dict[str, Any]], **kw: Any) -> Limiter:
    grace = kw.pop("seed_grace_s", None)
    cfg = make_config(budgets, counters=url, store=f"sqlite:///{tmp_path / 'ledger.db'}", **kw)
    return await Limiter.create(cfg, prefix=prefix, seed_grace_s=grace)


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
    # Two when the minute turned between the reserve and the settle.
    assert 1 <= len(keys) <= 2
    for key in keys:
        ttl_ms = int(client.pttl(key))
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


async def test_fail_open_with_no_figure_from_redis_refuses(tmp_path: Path) -> None:
    # Redis was never reached: there is no last known headroom to take a share of.
    lim = await replica(tmp_path, "redis://127.0.0.1:9/0", "x", [CAP], on_counter_failure="open")
    adm = await lim.reserve(ctx(), bound("0.01"))
    assert adm.refusal is not None and adm.refusal.kind == "counters_unavailable"
    assert "no recent figure" in adm.refusal.message
    assert (await lim.reserve(ctx(principal="bob"), bound("0.01"))).ok  # no budget applies
    await lim.close()


def _wipe(url: str, prefix: str) -> int:
    """What a Redis restarted without persistence, or a FLUSHDB, leaves of these counters: nothing."""
    client = redis.Redis.from_url(url)
    n = 0
    for k in client.scan_iter(match=f"{prefix}:*", count=1000):
        n += int(client.delete(k))
    client.close()
    return n


async def test_counters_lost_in_redis_are_reseeded_from_the_ledger(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    insert_rows(store, [{"ts": time.time() - 5, "principal": "alice", "cost_usd": "0.60", "output": 10}])
    lim = await replica(tmp_path, redis_url, redis_prefix, [CAP], seed_grace_s=0.05)
    assert not (await lim.reserve(ctx(), bound("0.5"))).ok
    assert _wipe(redis_url, redis_prefix) > 0
    # Before the fix the counters restarted at zero here and $0.50 was admitted.
    refused = await lim.reserve(ctx(), bound("0.5"))
    assert refused.refusal is not None and refused.refusal.kind == "budget"
    s = by_name(await lim.snapshot())["cap"]
    assert s.spent_usd == Decimal("0.6") and s.reserved_usd == 0
    assert (await lim.reserve(ctx(), bound("0.4"))).ok
    await lim.close()


async def test_reservations_in_flight_survive_the_loss(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # Two replicas; `a` has a request in flight and sends nothing more when Redis
    # loses its data. Its heartbeat holds the reservation again during `b`'s grace
    # period, so `b` cannot hand that headroom out twice.
    a = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    b = await replica(tmp_path, redis_url, redis_prefix, [CAP])
    inflight = await a.reserve(ctx(), bound("0.7"))
    assert inflight.ok
    _wipe(redis_url, redis_prefix)
    assert not (await b.reserve(ctx(), bound("0.5"))).ok
    s = by_name(await b.snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal(0), Decimal("0.7"))
    await a.settle(inflight, Usage(output=1), Decimal("0.65"))
    s = by_name(await b.snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal("0.65"), Decimal(0))
    await a.close()
    await b.close()


async def test_a_settle_whose_reservation_was_lost_counts_in_full(redis_url: str, redis_prefix: str) -> None:
    red = RedisCounters(redis_url, prefix=redis_prefix)
    e = Entry("b:lost:1", (1000, -1, -1, -1, -1, -1, -1), expire_at=time.time() + 3600)
    now = time.time()
    assert await red.seed_epoch([], now, "e1")
    assert await red.reserve_in("e1", [e], "r1", (800, 1, 0, 0, 0, 0, 0), now, 60) is not None
    _wipe(redis_url, redis_prefix)
    # Every reserve now refuses to count on what is left until the counters are seeded.
    try:
        await red.reserve_in("e1", [e], "r2", (1, 1, 0, 0, 0, 0, 0), now, 60)
        raise AssertionError("a reserve counted on lost counters")
    except CountersLost as lost:
        assert lost.epoch is None
    assert await red.seed([], now) == 0  # nothing to create, and without an epoch it could not
    await red.settle([e], "r1", (300, 1, 0, 0, 0, 0, 0), now, False, (800, 1, 0, 0, 0, 0, 0))
    [r] = await red.read([e], now)
    # Not 300 - 800: a hold that no longer exists is not subtracted.
    assert r.spent[:2] == (300, 1) and r.reserved[:2] == (0, 0)
    # A second settle of the same id (a replay) and a late re-hold change nothing.
    await red.settle([e], "r1", (300, 1, 0, 0, 0, 0, 0), now, False, (800, 1, 0, 0, 0, 0, 0))
    assert await red.rehold([("r1", now + 60, (800, 1, 0, 0, 0, 0, 0), [e])]) == 0
    assert (await red.read([e], now))[0] == r
    await red.flush_prefix()
    await red.close()


async def test_replicas_noticing_a_loss_together_seed_it_once(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    insert_rows(store, [{"ts": time.time() - 5, "principal": "alice", "cost_usd": "0.30", "output": 10}])
    lims = [await replica(tmp_path, redis_url, redis_prefix, [CAP], seed_grace_s=0.05) for _ in range(3)]
    _wipe(redis_url, redis_prefix)
    got = await asyncio.gather(*(lim.reserve(ctx(), bound("0.1")) for lim in lims))
    assert all(a.ok for a in got)
    s = by_name(await lims[0].snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal("0.3"), Decimal("0.3"))
    for lim in lims:
        await lim.close()


async def test_a_ledger_that_cannot_be_read_fails_closed_after_a_loss(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    lim = await replica(tmp_path, redis_url, redis_prefix, [CAP], seed_grace_s=0.05)
    _wipe(redis_url, redis_prefix)
    (tmp_path / "ledger.db").unlink()
    (tmp_path / "ledger.db").mkdir()  # now unreadable as a database
    adm = await lim.reserve(ctx(), bound("0.1"))
    assert adm.refusal is not None and adm.refusal.kind == "counters_unavailable"
    assert "rebuilt from the ledger" in adm.refusal.message
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


def _start_persistent_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """A private Redis that keeps its data across a SHUTDOWN SAVE: an outage, not a loss."""
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--dbfilename",
            "counters.rdb",
        ],
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


def _shutdown_saving(port: int, proc: subprocess.Popen[bytes]) -> None:
    client = redis.Redis(port=port)
    try:
        client.shutdown(save=True)
    except redis.exceptions.ConnectionError:
        pass
    proc.wait()


async def test_fail_open_admits_at_most_a_share_of_the_last_headroom(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary", "not on PATH")
    port = _free_port()
    proc = _start_persistent_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        kw: dict[str, Any] = {"on_counter_failure": "open", "counters_replicas": 2, "seed_grace_s": 0.05}
        a = await replica(tmp_path, url, "open", [CAP], **kw)
        b = await replica(tmp_path, url, "open", [CAP], **kw)
        for i in range(8):
            lim = a if i % 2 else b
            adm = await lim.reserve(ctx(), bound("0.1"))
            await lim.settle(adm, Usage(output=1), Decimal("0.1"))
        for lim in (a, b):  # each replica's last figure: $0.80 spent, $0.01 its own request
            await lim.release(await lim.reserve(ctx(), bound("0.01")))
        _shutdown_saving(port, proc)
        t = time.time()
        # Headroom $0.19, two replicas: each may admit up to $0.095 on its own.
        inflight = await a.reserve(ctx(), bound("0.05"), now=t)
        assert inflight.ok
        refused = await a.reserve(ctx(), bound("0.05"), now=t)
        assert refused.refusal is not None and refused.refusal.kind == "counters_unavailable"
        assert "share of the last known headroom" in refused.refusal.message
        other = await b.reserve(ctx(), bound("0.05"), now=t)
        assert other.ok
        await b.settle(other, Usage(output=1), Decimal("0.05"), now=t)
        assert not (await b.reserve(ctx(), bound("0.05"), now=t)).ok
        # Before the fix each replica used counters seeded at start-up (here: $0 spent).
        proc = _start_persistent_redis(port, tmp_path)  # back, with its data
        later = t + 1.5  # past the one-second breaker
        await b.release(await b.reserve(ctx(), bound("0.01"), now=later), now=later)
        await a.release(await a.reserve(ctx(), bound("0.01"), now=later), now=later)
        await asyncio.sleep(0.3)  # replay and re-hold run in the background
        s = by_name(await a.snapshot(now=later))["cap"]
        # b's $0.05 was replayed; a's request still in flight is held in Redis now.
        assert (s.spent_usd, s.reserved_usd) == (Decimal("0.85"), Decimal("0.05"))
        await a.settle(inflight, Usage(output=1), Decimal("0.05"), now=later)
        s = by_name(await a.snapshot(now=later))["cap"]
        assert (s.spent_usd, s.reserved_usd) == (Decimal("0.90"), Decimal(0))
        await a.close()
        await b.close()
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
        assert await red.seed_epoch([], now, "e1")
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
