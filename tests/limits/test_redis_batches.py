"""How settles travel to Redis: batched per event-loop turn, carried by reserves, on one pipelined connection.

A settle waits at most until the end of the loop turn it was made in; a
reserve made in that turn carries it in the same script call (lua/batch.lua).
These tests check that the batching changes when Redis hears of a settle, never
what it counts: the same figures as one call per operation, no overshoot across
replicas, nothing lost on shutdown, an outage, or a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tests.limits.conftest import bound, by_name, ctx, make_config
from tests.limits.flaky_tcp import FlakyTCP
from tests.limits.test_redis import _ENTRIES, _op
from tokenfuse.limits.budgets import BudgetStatus
from tokenfuse.limits.counters import CountersLost, Entry, Vec
from tokenfuse.limits.limiter import Limiter
from tokenfuse.limits.pipe import Pipe, bulk, command, supported
from tokenfuse.limits.redis import RedisCounters, Reserved, ReserveOp, SettleOp
from tokenfuse.usage import Usage

CAP = {"name": "cap", "match": {"principal": "alice"}, "window": "day", "limit": {"usd": "1.00"}}
_T0 = 1_900_000_000.0


async def replica(tmp_path: Path, url: str, prefix: str, **kw: Any) -> Limiter:
    on_settle = kw.pop("on_settle", None)
    cfg = make_config([CAP], counters=url, store=f"sqlite:///{tmp_path / 'ledger.db'}", **kw)
    return await Limiter.create(cfg, prefix=prefix, on_settle=on_settle)


def record_calls(lim: Limiter) -> list[tuple[int, bool]]:
    """(settles carried, whether a reserve went along) for every script call the limiter makes."""
    red = lim._redis
    assert red is not None
    calls: list[tuple[int, bool]] = []
    real = red.exchange

    async def exchange(settles: Any, reserve: Any = None) -> Any:
        calls.append((len(settles), reserve is not None))
        return await real(settles, reserve)

    red.exchange = exchange  # type: ignore[method-assign]
    return calls


# -- the Lua side: one call does what the single-operation scripts do -------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(_op, max_size=30))
def test_batched_calls_count_what_single_calls_count(redis_url: str, ops: list[tuple[Any, ...]]) -> None:
    """Settles held back and sent with the next reserve leave every counter as one call per operation does."""

    async def run() -> None:
        single = RedisCounters(redis_url, prefix=f"tftest:{uuid.uuid4().hex[:12]}")
        batched = RedisCounters(redis_url, prefix=f"tftest:{uuid.uuid4().hex[:12]}")
        now = _T0
        for red in (single, batched):
            assert await red.seed_epoch([], now, "e1")
        held: dict[int, tuple[tuple[Entry, ...], Vec]] = {}
        waiting: list[SettleOp] = []
        try:
            for n, (kind, a, b, c) in enumerate(ops):
                if kind == "reserve":
                    entries = tuple(_ENTRIES[i] for i in a)
                    amount: Vec = (b, 1, 0, 0, 0, c, 0)
                    want = await single.reserve_in("e1", entries, str(n), amount, now, 300)
                    _, got = await batched.exchange(waiting, ReserveOp("e1", entries, str(n), amount, now, 300))
                    waiting = []
                    assert isinstance(got, Reserved) and got.short == want.short
                    if want.short is None:
                        held[n] = (entries, amount)
                elif kind in ("settle", "release") and held:
                    rid = sorted(held)[a % len(held)]
                    entries, amount = held.pop(rid)
                    actual: Vec = (b, 1, 0, 0, 0, c, 0) if kind == "settle" else (0,) * 7
                    await single.settle(entries, str(rid), actual, now, False, amount)
                    waiting.append(SettleOp(entries, str(rid), actual, amount, now, False))
                elif kind == "wait":
                    now += a
            await batched.exchange(waiting)
            assert await batched.read(_ENTRIES, now) == await single.read(_ENTRIES, now)
        finally:
            for red in (single, batched):
                await red.flush_prefix()
                await red.close()

    asyncio.run(run())


async def test_settles_apply_whatever_the_reserve_answers(redis_url: str, redis_prefix: str) -> None:
    red = RedisCounters(redis_url, prefix=redis_prefix)
    e = Entry("b:cap:1", (1000, -1, -1, -1, -1, -1, -1), expire_at=_T0 + 3600)
    assert await red.seed_epoch([], _T0, "e1")
    for rid in ("a", "b"):
        assert (await red.reserve_in("e1", [e], rid, (400, 1, 0, 0, 0, 0, 0), _T0, 60)).short is None
    # Refused (no room for 300 until a settle lands), yet the settle it carries is applied
    # first, and its figures come back: after it, not after the refused reserve.
    settle_a = SettleOp([e], "a", (100, 1, 0, 0, 0, 0, 0), (400, 1, 0, 0, 0, 0, 0), _T0, True)
    readings, got = await red.exchange([settle_a], ReserveOp("e1", [e], "c", (700, 1, 0, 0, 0, 0, 0), _T0, 60))
    assert isinstance(got, Reserved) and got.short is not None
    assert got.short.spent == 100 and got.short.reserved == 400
    [[r]] = readings  # type: ignore[misc]
    assert r.spent[:2] == (100, 1) and r.reserved[:2] == (400, 1)
    # An epoch another replica seeded since: the reserve is not made, the settle still is.
    settle_b = SettleOp([e], "b", (0,) * 7, (400, 1, 0, 0, 0, 0, 0), _T0, False)
    _, got = await red.exchange([settle_b], ReserveOp("stale", [e], "d", (1, 1, 0, 0, 0, 0, 0), _T0, 60))
    assert isinstance(got, CountersLost) and got.epoch == "e1"
    [r] = await red.read([e], _T0)
    assert r.spent[:2] == (100, 1) and r.reserved[:2] == (0, 0)
    await red.close()


# -- the limiter: when settles travel ---------------------------------------------------------


async def test_a_settle_rides_with_a_reserve_of_the_same_loop_turn(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    lim = await replica(tmp_path, redis_url, redis_prefix)
    other = await replica(tmp_path, redis_url, redis_prefix)
    first = await lim.reserve(ctx(), bound("0.3"))
    calls = record_calls(lim)
    # As in the gateway: one request settles after its answer while the next one reserves.
    settling = asyncio.ensure_future(lim.settle(first, Usage(output=1), Decimal("0.1")))
    await asyncio.sleep(0)  # the settle is now waiting for the end of this turn
    assert not settling.done()
    second = await lim.reserve(ctx(), bound("0.3"))
    await settling
    assert second.ok
    assert calls == [(1, True)]  # one round trip for both
    s = by_name(await other.snapshot())["cap"]  # another replica sees the settle already
    assert (s.spent_usd, s.spent_requests, s.reserved_usd) == (Decimal("0.1"), 1, Decimal("0.3"))
    await lim.release(second)
    assert calls[-1] == (1, False)  # no reserve came: it went on its own, within the turn
    await lim.close()
    await other.close()


async def test_settles_of_one_turn_go_in_one_call(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    seen: list[list[BudgetStatus]] = []
    lim = await replica(tmp_path, redis_url, redis_prefix, on_settle=seen.append)
    adms = [await lim.reserve(ctx(), bound("0.1")) for _ in range(5)]
    calls = record_calls(lim)
    await asyncio.gather(*(lim.settle(a, Usage(output=1), Decimal("0.05")) for a in adms))
    assert calls == [(5, False)]
    # Alerts still see each settle's figures, in order.
    assert [by_name(x)["cap"].spent_usd for x in seen] == [Decimal("0.05") * i for i in range(1, 6)]
    s = by_name(await lim.snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal("0.25"), Decimal(0))
    await lim.close()


async def test_close_sends_the_settles_still_waiting(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    lim = await replica(tmp_path, redis_url, redis_prefix)
    adm = await lim.reserve(ctx(), bound("0.4"))
    settling = asyncio.ensure_future(lim.settle(adm, Usage(output=1), Decimal("0.2")))
    await asyncio.sleep(0)
    assert lim._outbox  # waiting for the end of the turn, and shutdown comes first
    await lim.close()
    await settling
    after = await replica(tmp_path, redis_url, redis_prefix)
    s = by_name(await after.snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal("0.2"), Decimal(0))
    await after.close()


async def test_a_crash_with_settles_waiting_charges_their_bounds(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # A replica dies after answering two requests but before their settles left:
    # as for any request in flight at a crash, Redis keeps their reservations and
    # charges them at their bounds when the TTL passes. Nothing is under-counted.
    crashed = await replica(tmp_path, redis_url, redis_prefix, reservation_ttl_s=5)
    survivor = await replica(tmp_path, redis_url, redis_prefix, reservation_ttl_s=5)
    t = _T0
    adms = [await crashed.reserve(ctx(), bound("0.4"), now=t) for _ in range(2)]
    crashed._outbox_due = lambda: None  # type: ignore[method-assign]  # the turn never ends
    settling = [asyncio.ensure_future(crashed.settle(a, Usage(output=1), Decimal("0.1"), now=t)) for a in adms]
    await asyncio.sleep(0.05)
    assert len(crashed._outbox) == 2 and not any(s.done() for s in settling)
    assert not (await survivor.reserve(ctx(), bound("0.3"), now=t + 4)).ok  # still held
    s = by_name(await survivor.snapshot(now=t + 6))["cap"]
    assert (s.spent_usd, s.spent_requests, s.reserved_usd) == (Decimal("0.8"), 2, Decimal(0))
    for f in settling:
        f.cancel()
    crashed._outbox.clear()  # what died with the process
    await crashed.close()
    await survivor.close()


async def test_two_replicas_answering_while_reserving_never_overshoot(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # Gateway-shaped: every request is its own task, settles after its answer (at its
    # whole bound, the worst case), and its client sends the next request at once, so
    # settles ride with other requests' reserves all the time.
    a = await replica(tmp_path, redis_url, redis_prefix)
    b = await replica(tmp_path, redis_url, redis_prefix)
    ca, cb = record_calls(a), record_calls(b)
    rng = random.Random(5)
    billed = Decimal(0)
    tasks: set[asyncio.Task[None]] = set()

    async def request(lim: Limiter, answered: asyncio.Future[None]) -> None:
        nonlocal billed
        usd = Decimal(rng.randint(5, 30)) / 1000
        adm = await lim.reserve(ctx(), bound(str(usd)))
        answered.set_result(None)
        if adm.ok:
            billed += usd
            await asyncio.sleep(rng.random() / 1000)
            await lim.settle(adm, Usage(output=1), usd)

    async def client(lim: Limiter) -> None:
        for _ in range(40):
            answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(request(lim, answered))
            tasks.add(task)
            await answered

    await asyncio.gather(*(client(a if i % 2 else b) for i in range(16)))
    await asyncio.gather(*tasks)
    sa, sb = by_name(await a.snapshot())["cap"], by_name(await b.snapshot())["cap"]
    assert sa.spent_usd == sb.spent_usd == billed <= Decimal("1.00")
    assert billed >= Decimal("0.95") and sa.reserved_usd == 0
    carried = sum(n for n, reserving in ca + cb if reserving)
    assert carried > 0  # settles did ride with reserves
    await a.close()
    await b.close()


async def test_an_outage_under_a_carrying_reserve_keeps_the_usage(tmp_path: Path, redis_url: str) -> None:
    host, port = redis_url.split("//")[1].split("/")[0].split(":")
    proxy = FlakyTCP(host, int(port))
    prefix = f"tftest:{uuid.uuid4().hex[:12]}"
    try:
        lim = await replica(tmp_path, proxy.url_for(redis_url), prefix)
        t = _T0
        adm = await lim.reserve(ctx(), bound("0.5"), now=t)
        proxy.down()
        settling = asyncio.ensure_future(lim.settle(adm, Usage(output=1), Decimal("0.3"), now=t))
        await asyncio.sleep(0)
        # This reserve carries the settle, and fails with it.
        down = await lim.reserve(ctx(), bound("0.1"), now=t)
        await settling
        assert down.refusal is not None and down.refusal.kind == "counters_unavailable"
        assert len(lim._replay) == 1  # the usage is kept for when Redis answers
        proxy.up()
        back = await lim.reserve(ctx(), bound("0.1"), now=t + 2)  # past the breaker
        assert back.ok
        await lim.release(back, now=t + 2)
        for _ in range(100):
            if not lim._replay:
                break
            await asyncio.sleep(0.01)
        s = by_name(await lim.snapshot(now=t + 2))["cap"]
        assert (s.spent_usd, s.spent_requests, s.reserved_usd) == (Decimal("0.3"), 1, Decimal(0))
        await lim.close()
    finally:
        proxy.close()
        cleanup = RedisCounters(redis_url, prefix=prefix)
        await cleanup.flush_prefix()
        await cleanup.close()


async def test_a_url_the_pipe_does_not_handle_goes_through_redis_py(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/?db=" + redis_url.rsplit("/", 1)[1]
    assert not supported(url)
    lim = await replica(tmp_path, url, redis_prefix)
    assert lim._redis is not None and lim._redis._pipe is None
    adm = await lim.reserve(ctx(), bound("0.4"))
    await lim.settle(adm, Usage(output=1), Decimal("0.25"))
    other = await replica(tmp_path, redis_url, redis_prefix)  # the same database, by path
    s = by_name(await other.snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal("0.25"), Decimal(0))
    await lim.close()
    await other.close()


# -- the pipe ---------------------------------------------------------------------------------


async def test_the_pipe_matches_replies_to_callers_in_order(redis_url: str) -> None:
    p = Pipe(redis_url)
    got = await asyncio.gather(*(p.call(command([bulk("ECHO"), bulk(str(i))])) for i in range(300)))
    assert got == [str(i).encode() for i in range(300)]
    # An error reply is a value for its caller only; the pipeline goes on.
    bad, ok = await asyncio.gather(p.call(command([bulk("NO-SUCH-COMMAND")])), p.call(command([bulk("PING")])))
    assert isinstance(bad, ResponseError) and ok == b"PONG"
    p.close()
    assert await p.call(command([bulk("PING")])) == b"PONG"  # reconnects
    p.close()


async def test_the_pipe_times_out_a_silent_server_and_reconnects() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does) and never answers
    p = Pipe(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=0.1)
    for _ in range(2):  # the second call is on a new connection
        results = await asyncio.gather(*(p.call(command([bulk("PING")])) for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results)
    p.close()
    silent.close()


async def test_a_counter_store_that_forgot_the_script_gets_it_again(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    lim = await replica(tmp_path, redis_url, redis_prefix)
    red = lim._redis
    assert red is not None
    # As after a Redis restart: Redis does not know the script. (SCRIPT FLUSH would empty
    # every client's cache on this shared Redis; a script text nobody loaded does the same.)
    red._batch_lua = red._batch_lua + "\n-- " + uuid.uuid4().hex
    red._batch_head[1] = bulk(hashlib.sha1(red._batch_lua.encode()).hexdigest())
    adm = await lim.reserve(ctx(), bound("0.4"))
    assert adm.ok
    await lim.settle(adm, Usage(output=1), Decimal("0.1"))
    s = by_name(await lim.snapshot())["cap"]
    assert (s.spent_usd, s.reserved_usd) == (Decimal("0.1"), Decimal(0))
    await lim.close()
