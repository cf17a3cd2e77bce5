"""Admit or refuse a request against every budget and session cap it falls under.

`reserve` holds the request's upper bound against all its counters at once
(all or none) and refuses when the bound does not fit the headroom of any of
them: it never shrinks a reservation below the request's bound. Given a `Fit`
it may instead lower the request's output limit until its (smaller, still
true) bound fits, and reserves that: the caller forwards the lowered limit. `settle` replaces the
reservation by what the provider billed; `release` drops it for a request
that was never billed.

With Redis counters the limiter also keeps the counters honest when the store
misbehaves: a Redis that lost its data is re-seeded from the ledger before
anything is admitted (`_sync`), reservations still in flight are held again
(`_rehold`), and with ``on_counter_failure: open`` an outage admits at most a
share of the last headroom Redis reported (`_open_entries`).

With Redis, settles travel in batches: a settle waits in ``_outbox`` (its
reservation still held in Redis, so the counters can only over-count
meanwhile) until the end of the event-loop turn; a reserve made in that turn
carries the waiting settles in its own script call, and whatever is left then
goes in one call (`_exchange`; docs/limits.md, "How settles travel").
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tokenfuse.aio import spawn
from tokenfuse.config import BudgetConfig, Config, SessionCaps
from tokenfuse.limits.bounds import Bound, compute_bound
from tokenfuse.limits.budgets import Budget, BudgetIndex, BudgetStatus, compile_budgets, status_from, utc
from tokenfuse.limits.context import RequestContext
from tokenfuse.limits.counters import (
    DIMS,
    NDIMS,
    UNLIMITED,
    ZERO,
    Counters,
    CountersLost,
    CountersUnavailable,
    Entry,
    Reading,
    Seed,
    Shortfall,
    Vec,
    from_nano,
    to_nano,
)
from tokenfuse.limits.fit import Fit
from tokenfuse.limits.memory import MemoryCounters
from tokenfuse.limits.prefix import PrefixBounds
from tokenfuse.limits.rebuild import ledger_seeds
from tokenfuse.usage import Usage

if TYPE_CHECKING:
    from tokenfuse.limits.redis import RedisCounters, Reserved, ReserveOp, SettleOp


def redacted(url: str) -> str:
    from tokenfuse.limits.redis import redacted as hide

    return hide(url)


log = logging.getLogger("tokenfuse.limits")

# After a counter-store failure, skip it for this long: a dead Redis must not
# cost every request a connect timeout.
BREAKER_S = 1.0
LOUD_LOG_EVERY_S = 30.0
REPLAY_MAX = 100_000
# While requests are in flight, a replica checks the Redis epoch this often (when
# no reserve did it meanwhile), so that after a data loss it holds its in-flight
# reservations again well within the re-seeding replica's grace period.
HEARTBEAT_S = 0.1
SEED_LOCK_TTL_S = 30.0
# How long a request waits for another replica to finish re-seeding lost counters.
SEED_WAIT_S = 5.0
SEED_POLL_S = 0.02
MAX_SYNCS = 3
# Fail-open trusts a budget's last headroom reported by Redis for this long only.
OPEN_SNAPSHOT_MAX_AGE_S = 10.0
# Settles sent in one script call at most (a burst is split, so that one call
# does not hold Redis for long).
SETTLE_BATCH = 64


@dataclass(frozen=True, slots=True)
class Refusal:
    kind: str  # "budget" | "session_cap" | "counters_unavailable"
    budget: str  # budget name (session caps: "session:<id>")
    message: str
    limit: str
    spent: str
    reserved: str
    requested: str
    resets_at: datetime | None
    # The largest output limit that would have fitted the refusing counter
    # (0: nothing fits, even with no output); None when unknown.
    fits: int | None = None


class _BreakerOpen(CountersUnavailable):
    """The store failed moments ago; not retried yet."""


@dataclass(frozen=True, slots=True)
class _Session:
    session: str
    caps: SessionCaps


_Owner = Budget | _Session


@dataclass(slots=True)
class _Held:
    res_id: str
    entries: tuple[Entry, ...]  # where it is held now (fail-open: this replica's share counters)
    owners: tuple[_Owner, ...]
    backend: Counters
    at: float
    amount: Vec
    origin: tuple[Entry, ...]  # the budgets' own counters
    expiry: float


@dataclass(slots=True)
class _Outgoing:
    """A settle (or release) waiting for its trip to Redis."""

    held: _Held
    actual: Vec
    t: float
    want: bool
    done: asyncio.Future[None] | None


@dataclass(slots=True)
class Admission:
    ok: bool
    refusal: Refusal | None = None
    held: _Held | None = field(default=None, repr=False)
    # What was reserved: the caller's bound, or the bound at a lowered output
    # limit (``bound.lowered_from`` set) that the caller must forward.
    bound: Bound | None = None
    remember: bytes | None = field(default=None, repr=False)  # conversation key, recorded at settle


def bound_vector(bound: Bound) -> Vec:
    t = bound.tokens
    return (
        to_nano(bound.usd),
        1,
        t.get("input_uncached", 0),
        t.get("cache_read", 0),
        t.get("cache_write", 0),
        t.get("output", 0),
        t.get("total", 0),
    )


def _within(dim: int, room: int) -> Callable[[Bound], bool]:
    """Whether a bound fits ``room`` in dimension ``dim``."""
    return lambda b: bound_vector(b)[dim] <= room


def usage_vector(usage: Usage, cost: Decimal) -> Vec:
    return (
        to_nano(cost),
        1,
        usage.input_uncached,
        usage.cache_read,
        usage.cache_write_all,
        usage.output,
        usage.total,
    )


def describe(dim: int, n: int) -> str:
    if dim == 0:
        return f"${from_nano(n).quantize(Decimal('0.000001')).normalize():f}"
    if dim == 1:
        return f"{n} request" + ("" if n == 1 else "s")
    return f"{n} {DIMS[dim]} tokens"


def _iso(t: float | None) -> str | None:
    return None if t is None else utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def session_limits(caps: SessionCaps) -> Vec:
    return (
        UNLIMITED if caps.max_usd is None else to_nano(caps.max_usd),
        UNLIMITED if caps.max_requests is None else caps.max_requests,
        *((UNLIMITED,) * (NDIMS - 2)),
    )


def _capped(caps: SessionCaps | None) -> bool:
    return caps is not None and (caps.max_requests is not None or caps.max_usd is not None)


# How often a request waiting for in-flight reservations to settle looks again.
ADMISSION_POLL_S = 0.005


class Limiter:
    def __init__(
        self,
        config: Config,
        backend: Counters,
        *,
        fallback: MemoryCounters | None = None,
        on_settle: Callable[[list[BudgetStatus]], None] | None = None,
    ) -> None:
        self.config = config
        self._backend = backend
        self._memory = backend if isinstance(backend, MemoryCounters) else None
        self._fallback = fallback
        self._redis: RedisCounters | None = None
        self._reserve_op: type[ReserveOp]
        self._settle_op: type[SettleOp]
        if self._memory is None:
            from tokenfuse.limits.redis import RedisCounters, ReserveOp, SettleOp

            if isinstance(backend, RedisCounters):
                self._redis = backend
                self._reserve_op, self._settle_op = ReserveOp, SettleOp
        self._on_settle = on_settle
        self._closed_mode = config.on_counter_failure == "closed"
        self._ttl = float(config.reservation_ttl_s)
        self._admission_wait = config.admission_wait_ms / 1000
        self._config_budgets = compile_budgets(config.budgets, "config")
        self._runtime: list[Budget] = []
        self._index = BudgetIndex(self._config_budgets)
        self._pid = os.urandom(4).hex() + ":"
        self._seq = itertools.count(1)
        self._down_until = 0.0
        self._last_loud = -LOUD_LOG_EVERY_S
        self._replay: list[tuple[tuple[Entry, ...], str, Vec, float, Vec]] = []
        self._flushing = False
        self._outbox: list[_Outgoing] = []
        self._outbox_due_handle: asyncio.Handle | None = None
        self._pending: dict[str, asyncio.Future[None]] = {}
        # Redis only: the epoch of the counters this replica counts on, its
        # reservations in flight (to hold again if Redis loses them), and, for
        # fail-open, each counter's spent + reserved at its last reserve.
        self._epoch: str | None = None
        self._live: dict[str, _Held] = {}
        self._seen: dict[str, tuple[float, Vec]] = {}
        self._open_admitted = False
        self._replicas = config.counters_replicas
        self._grace = 2 * config.ledger.batch_interval_ms / 1000 + 3 * HEARTBEAT_S
        self._sync_lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[Any] | None = None
        self._heard = 0.0
        self._migrating = False
        self._sync_failed_until = 0.0
        # Exact input usage of recent requests, for tighter bounds of their next turns.
        self.prefixes = PrefixBounds()

    # -- construction -------------------------------------------------------------

    @classmethod
    async def create(
        cls,
        config: Config,
        *,
        on_settle: Callable[[list[BudgetStatus]], None] | None = None,
        prefix: str = "tokenfuse",
        rebuild: bool = True,
        now: float | None = None,
        seed_grace_s: float | None = None,
    ) -> Limiter:
        """Build the backend named by ``config.counters`` and rebuild open windows from the ledger.

        ``prefix`` namespaces Redis keys (one per deployment sharing a Redis).
        ``seed_grace_s`` overrides how long a replica re-seeding empty Redis
        counters waits for the others first (tests with a single replica).
        """
        backend: Counters
        fallback = None
        if config.counters == "memory":
            backend = MemoryCounters()
        else:
            from tokenfuse.limits.redis import RedisCounters

            backend = RedisCounters(config.counters, prefix=prefix)
            if config.on_counter_failure == "open":
                fallback = MemoryCounters()
        lim = cls(config, backend, fallback=fallback, on_settle=on_settle)
        if seed_grace_s is not None:
            lim._grace = seed_grace_s
        if rebuild:
            await lim._start(now)
        return lim

    async def _start(self, now: float | None) -> None:
        t = time.time() if now is None else now
        if self._redis is None:
            await self.rebuild(self._config_budgets, now=t, sessions=True)
            return
        policy = await self._redis.eviction_policy()
        if policy is not None and policy != "noeviction":
            log.error(
                "Redis at %s may evict keys (maxmemory-policy %s): an evicted budget counter restarts from zero "
                "unless the whole epoch is lost; set maxmemory-policy noeviction for the counters' Redis",
                redacted(self._redis.url),
                policy,
            )
        try:
            await self._sync(t)
        except CountersUnavailable as exc:
            # Still read the ledger: a store that cannot be read must stop start-up.
            await self._ledger_seeds(self._config_budgets, t, self._session_idle())
            self._trip(t, f"{exc}; the counters will be loaded when it answers")
        except CountersLost:
            pass  # another replica is still seeding; the first reserve catches up

    def _session_idle(self) -> float | None:
        caps = [self.config.sessions, *self.config.sessions.workflows.values()]
        caps += [k.sessions for k in self.config.keys if k.sessions is not None]
        idle = [c.idle_expiry_s for c in caps if _capped(c)]
        return float(max(idle)) if idle else None

    async def rebuild(
        self, budgets: Sequence[Budget], *, now: float | None = None, sessions: bool = False
    ) -> int:
        """Load the ledger's spend for ``budgets``' open windows into counters not yet holding any."""
        t = time.time() if now is None else now
        idle = self._session_idle() if sessions else None
        if not budgets and not idle:
            return 0
        seeds = await self._ledger_seeds(budgets, t, idle)
        try:
            return await self._backend.seed(seeds, t)
        except CountersLost:
            return 0  # Redis lost its counters: the re-seed that follows covers these budgets
        except CountersUnavailable as exc:
            # Forget the epoch: the first reserve after Redis answers again
            # catches up, loading every budget's missing counters.
            self._epoch = None
            self._trip(t, f"could not load rebuilt budget counters ({exc}); will retry when it answers")
            return 0

    async def _ledger_seeds(self, budgets: Sequence[Budget], t: float, idle: float | None) -> list[Seed]:
        try:
            return await asyncio.to_thread(ledger_seeds, self.config.store, list(budgets), t, idle)
        except Exception as exc:
            raise RuntimeError(
                f"cannot rebuild budget counters from the ledger at {self.config.store.split('@')[-1]}: {exc}; "
                "budgets would restart from zero, so tokenfuse will not start until the store is readable"
            ) from exc

    # -- the hot path ---------------------------------------------------------------

    def applies(self, ctx: RequestContext, session_caps: SessionCaps | None = None) -> bool:
        """Whether any budget or session cap covers this request (a cached lookup)."""
        if self._index and self._index.match(ctx):
            return True
        return ctx.session is not None and _capped(session_caps)

    async def reserve(
        self,
        ctx: RequestContext,
        bound: Bound,
        *,
        session_caps: SessionCaps | None = None,
        now: float | None = None,
        fit: Fit | None = None,
        remember: bytes | None = None,
    ) -> Admission:
        """Hold ``bound`` against every counter the request falls under, or refuse.

        With ``fit`` (and its policy allowing it), a request whose bound does
        not fit is retried at the largest output limit that fits the refusing
        counter's headroom, never below ``fit.floor``: each retry is a full
        atomic reserve, so a lowered request is admitted only if its own bound
        fits every counter at that moment (other replicas included).
        """
        budgets = self._index.match(ctx) if self._index else []
        capped = ctx.session is not None and _capped(session_caps)
        if not budgets and not capped:
            return Admission(True, bound=bound)
        t = time.time() if now is None else now
        if self._pending:
            for b in budgets:
                fut = self._pending.get(b.ident)
                if fut is not None:
                    await fut
        entries: list[Entry] = []
        owners: list[_Owner] = []
        keys: set[str] = set()
        for b in budgets:
            e = b.entry(t)
            if e.key not in keys:  # the same budget defined twice counts once
                keys.add(e.key)
                entries.append(e)
                owners.append(b)
        if capped:
            assert ctx.session is not None and session_caps is not None
            entries.append(
                Entry(
                    f"s:{ctx.session}",
                    session_limits(session_caps),
                    idle_s=float(session_caps.idle_expiry_s),
                    keep_limits=True,
                )
            )
            owners.append(_Session(ctx.session, session_caps))
        full = amount = bound_vector(bound)
        current = bound
        res_id = f"{self._pid}{next(self._seq)}"
        ent = tuple(entries)
        deadline: float | None = None
        syncs = 0
        lowering = fit is not None and fit.lower and fit.requested > fit.floor
        while True:
            if self._memory is not None:
                short = self._memory.reserve_now(ent, res_id, amount, t, self._ttl)
            else:
                try:
                    short = await self._remote_reserve(ent, res_id, amount, t)
                except CountersLost:
                    # Redis lost the counters (or another replica re-seeded them):
                    # catch up before anything is admitted, never fail open on it.
                    syncs += 1
                    try:
                        if syncs > MAX_SYNCS:
                            raise CountersLost(None)
                        await self._sync(t)
                    except (CountersLost, CountersUnavailable, RuntimeError) as exc:
                        log.error("budget counters could not be re-seeded: %s", exc)
                        return Admission(False, self._unavailable(owners, "lost"))
                    continue
                except CountersUnavailable as exc:
                    if not isinstance(exc, _BreakerOpen):
                        self._trip(t, str(exc))
                    if fit is not None and fit.input_tokens is not None:
                        # Fail-open shares come from figures other replicas may have
                        # moved since; the byte bound's margin is what kept that
                        # staleness under the cap as measured (docs/limits.md).
                        current = compute_bound(fit.info, fit.price, max_tokens=current.max_tokens)
                        amount = bound_vector(current)
                    adm = self._reserve_open(ent, owners, res_id, amount, t)
                    adm.bound = current if adm.ok else None
                    return adm
            if short is None:
                held = _Held(res_id, ent, tuple(owners), self._backend, t, amount, ent, t + self._ttl)
                if self._redis is not None:
                    self._live[res_id] = held
                    self._watch()
                return Admission(True, held=held, bound=current, remember=remember)
            d, cap = short.dim, ent[short.index].limits[short.dim]
            clock = time.monotonic()
            if deadline is None:
                deadline = clock + self._admission_wait
            # Refusing only because other requests' upper bounds are still held
            # would waste headroom they are about to give back: wait for them
            # (rather than lower the output limit of a request that would fit).
            can_wait = short.reserved > 0 and clock < deadline
            if can_wait and short.spent + amount[d] <= cap:
                await self._pause(deadline, clock)
                if now is None:
                    t = time.time()
                continue
            if lowering:
                assert fit is not None and current.max_tokens is not None
                room = cap - short.spent - short.reserved
                n = fit.largest(_within(d, room), current.max_tokens - 1)
                if n >= fit.floor:
                    # Strictly lower than the limit just refused, so this loop ends.
                    current = fit.bound(n)
                    amount = bound_vector(current)
                    continue
                if can_wait and short.spent + bound_vector(fit.bound(fit.floor))[d] <= cap:
                    # Even the floor needs headroom held by requests in flight: wait,
                    # then fit the full request again to what they gave back.
                    await self._pause(deadline, clock)
                    if now is None:
                        t = time.time()
                    current, amount = bound, full
                    continue
            break
        return Admission(False, self._refusal(short, ent, owners, full, t, fit))

    @staticmethod
    async def _pause(deadline: float, clock: float) -> None:
        await asyncio.sleep(min(ADMISSION_POLL_S, deadline - clock))

    async def _remote_reserve(
        self, ent: tuple[Entry, ...], res_id: str, amount: Vec, t: float
    ) -> Shortfall | None:
        if t < self._down_until:
            raise _BreakerOpen("the counter store failed moments ago")
        assert self._redis is not None
        op = self._reserve_op(self._epoch or "", ent, res_id, amount, t, self._ttl, self._fallback is not None)
        got = await self._exchange(self._take_outbox(), op)
        assert got is not None
        if isinstance(got, CountersLost):
            raise got
        self._heard = time.monotonic()
        # Usage still waiting to be replayed is not in these figures: do not
        # take them as the last known headroom until it is written.
        if got.used is not None and not self._replay:
            if len(self._seen) > 10_000:
                self._seen.clear()
            for e, used in zip(ent, got.used, strict=True):
                self._seen[e.key] = (t, used)
        if self._replay and not self._flushing:
            self._flushing = True
            spawn(self._flush_replay())
        if self._open_admitted and not self._migrating:
            self._migrating = True
            spawn(self._migrate())
        return got.short

    # -- counter-store loss and fail-open -------------------------------------------------

    async def _sync(self, t: float) -> None:
        """Catch up with the counters in Redis before admitting anything more.

        Re-holds this replica's reservations in flight (Redis may have lost
        them). If Redis has no epoch marker it lost its counters: one replica
        (SET NX lock) waits a grace period, so that the others hold their
        reservations again and their ledger writers flush what was settled
        before the loss, then adds the ledger's spend to every counter and sets
        a new epoch. If another replica seeded a new epoch, this one loads the
        counters only it knows about (run-time budgets, sessions) into it.
        Raises CountersLost when seeding did not finish in time, RuntimeError
        when the ledger cannot be read, CountersUnavailable when Redis is down.
        """
        redis = self._redis
        assert redis is not None
        async with self._sync_lock:
            if time.monotonic() < self._sync_failed_until:
                # It failed moments ago (the ledger cannot be read, say): refuse
                # at once rather than queue every request behind another attempt.
                raise CountersLost(None)
            try:
                await self._sync_locked(t)
            except Exception:
                self._sync_failed_until = time.monotonic() + BREAKER_S
                raise

    async def _sync_locked(self, t: float) -> None:
        redis = self._redis
        assert redis is not None
        deadline = time.monotonic() + SEED_WAIT_S
        while True:
            epoch = await redis.current_epoch()
            if epoch is not None and epoch == self._epoch:
                return
            await self._rehold()
            if epoch is not None:
                await self._seed_known(t, epoch)
                return
            if await redis.lock_seeding(self._pid, SEED_LOCK_TTL_S):
                try:
                    if await self._reseed(t):
                        return
                finally:
                    await redis.unlock_seeding(self._pid)
                continue
            if time.monotonic() >= deadline:
                raise CountersLost(None)
            await asyncio.sleep(SEED_POLL_S)

    async def _reseed(self, t: float) -> bool:
        redis = self._redis
        assert redis is not None
        await asyncio.sleep(self._grace)
        await self._rehold()
        seeds = await self._ledger_seeds(self.budgets, t, self._session_idle())
        epoch = os.urandom(8).hex()
        if not await redis.seed_epoch(seeds, t, epoch):
            return False
        self._epoch = epoch
        log.warning(
            "budget counters in Redis at %s had no epoch marker (a first start on this Redis, or it restarted "
            "empty, was flushed or evicted them): loaded %d counters from the ledger, held %d reservations "
            "in flight again",
            redacted(redis.url),
            len(seeds),
            len(self._live),
        )
        return True

    async def _seed_known(self, t: float, epoch: str) -> None:
        assert self._redis is not None
        seeds = await self._ledger_seeds(self.budgets, t, self._session_idle())
        await self._redis.seed(seeds, t)
        self._epoch = self._redis.epoch = epoch

    async def _rehold(self) -> None:
        """Hold this replica's reservations in flight in Redis again (those it no longer knows)."""
        redis = self._redis
        holds = list(self._live.values())
        if redis is None or not holds:
            return
        await redis.rehold([(h.res_id, h.expiry, h.amount, h.origin) for h in holds])
        for h in holds:
            if h.backend is not redis and h.res_id in self._live:
                # Admitted locally during an outage: from now on it settles in Redis.
                h.backend, h.entries = redis, h.origin
        self._open_admitted = any(h.backend is not redis for h in self._live.values())

    async def _migrate(self) -> None:
        try:
            await self._rehold()
        except CountersUnavailable:
            pass
        finally:
            self._migrating = False

    def _watch(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = spawn(self._beat())

    async def _beat(self) -> None:
        """While requests are in flight, notice a Redis that lost its data even with no new requests."""
        redis = self._redis
        assert redis is not None
        while self._live:
            await asyncio.sleep(HEARTBEAT_S)
            if not self._open_admitted and time.monotonic() - self._heard < HEARTBEAT_S:
                continue  # a reserve just confirmed the epoch
            try:
                if self._open_admitted:
                    await self._rehold()
                if self._replay and not self._flushing:
                    self._flushing = True
                    await self._flush_replay()
                if await redis.current_epoch() != self._epoch:
                    await self._sync(time.time())
                self._heard = time.monotonic()
            except (CountersUnavailable, CountersLost, RuntimeError):
                continue

    def _open_entries(self, ent: tuple[Entry, ...], t: float) -> tuple[Entry, ...] | None:
        """This replica's share of each counter's last known headroom, as local counters.

        None if a counter has no figure younger than OPEN_SNAPSHOT_MAX_AGE_S.
        The counters are named after the figure, so one figure gives one share,
        however many outages follow before Redis reports a new one.
        """
        out = []
        for e in ent:
            seen = self._seen.get(e.key)
            if seen is None or not 0 <= t - seen[0] <= OPEN_SNAPSHOT_MAX_AGE_S:
                return None
            at, used = seen
            share = tuple(
                UNLIMITED if cap == UNLIMITED else max(0, cap - u) // self._replicas
                for cap, u in zip(e.limits, used, strict=True)
            )
            out.append(Entry(f"open:{at!r}:{e.key}", share, expire_at=e.expire_at, idle_s=e.idle_s))
        return tuple(out)

    def _reserve_open(
        self, ent: tuple[Entry, ...], owners: Sequence[_Owner], res_id: str, amount: Vec, t: float
    ) -> Admission:
        if self._fallback is None:
            return Admission(False, self._unavailable(owners))
        local = self._open_entries(ent, t)
        if local is None:
            return Admission(False, self._unavailable(owners, "stale"))
        short = self._fallback.reserve_now(local, res_id, amount, t, self._ttl)
        if short is not None:
            return Admission(False, self._unavailable(owners, "share"))
        held = _Held(res_id, local, tuple(owners), self._fallback, t, amount, ent, t + self._ttl)
        self._live[res_id] = held
        self._open_admitted = True
        self._watch()
        return Admission(True, held=held)

    async def settle(
        self, admission: Admission, usage: Usage, cost: Decimal, *, now: float | None = None
    ) -> None:
        held = admission.held
        if admission.remember is not None:
            self.prefixes.record(admission.remember, usage)
            admission.remember = None
        if held is None:
            return
        admission.held = None  # a second settle must not count the usage twice
        await self._finish(held, usage_vector(usage, cost), time.time() if now is None else now)

    async def release(self, admission: Admission, *, now: float | None = None) -> None:
        held = admission.held
        if held is None:
            return
        admission.held = None
        await self._finish(held, ZERO, time.time() if now is None else now)

    async def _finish(self, held: _Held, actual: Vec, t: float) -> None:
        want = self._on_settle is not None and actual != ZERO
        readings: list[Reading] | None
        # No longer held again if Redis loses it: a re-hold racing this settle would
        # hold it again after the settle dropped it. If Redis lost it, the settle
        # counts the usage in full instead (settle.lua).
        self._live.pop(held.res_id, None)
        if held.backend is self._redis and self._redis is not None:
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            self._outbox.append(_Outgoing(held, actual, t, want, done))
            if len(self._outbox) >= SETTLE_BATCH:
                spawn(self._send_outbox())
            elif self._outbox_due_handle is None:
                self._outbox_due_handle = loop.call_soon(self._outbox_due)
            # Returns once Redis has it, as a settle always did: a reserve of this
            # loop turn carried it, or it went with the turn's other settles.
            await done
            return
        if isinstance(held.backend, MemoryCounters):
            readings = held.backend.settle_now(held.entries, held.res_id, actual, t, want)
            if held.backend is not self._backend:
                # Admitted through fail-open: Redis hears of it when it is back
                # (a release too, in case it was held again there meanwhile).
                self._queue_replay(held.origin, held.res_id, actual, t, held.amount)
                readings = None  # figures of this replica's share, not of the budget
        else:
            try:
                readings = await held.backend.settle(held.entries, held.res_id, actual, t, want, held.amount)
            except CountersUnavailable as exc:
                self._trip(t, f"{exc}; the usage will be written when it answers")
                readings = None
                # Its reservation is in the last figures Redis reported, so the
                # fail-open share already accounts for it.
                if actual != ZERO:
                    self._queue_replay(held.entries, held.res_id, actual, t, held.amount)
        if want and readings is not None and self._on_settle is not None:
            statuses = [
                self._status(o, e, r, held.at)
                for o, e, r in zip(held.owners, held.entries, readings, strict=True)
            ]
            try:
                self._on_settle(statuses)
            except Exception:
                log.exception("on_settle callback failed")

    # -- settles on their way to Redis --------------------------------------------------

    def _take_outbox(self) -> list[_Outgoing]:
        batch, self._outbox = self._outbox, []
        return batch

    def _outbox_due(self) -> None:
        self._outbox_due_handle = None
        if self._outbox:
            spawn(self._send_outbox())

    async def _send_outbox(self) -> None:
        """Send the waiting settles on their own (no reserve came to carry them)."""
        batch = self._take_outbox()
        if batch:
            try:
                await self._exchange(batch, None)
            except CountersUnavailable:
                pass  # queued for replay by _exchange

    async def _exchange(
        self, batch: list[_Outgoing], reserve: ReserveOp | None
    ) -> Reserved | CountersLost | None:
        """One script call: ``batch``'s settles, then ``reserve`` if given.

        Returns the reserve's answer (Reserved or CountersLost). Whatever
        happens, every settle of the batch is then done with: applied, queued
        for replay (Redis unreachable), or, if the caller was cancelled, left
        to Redis: applied if the call had gone out, else its reservation is
        charged at its bound when its TTL passes (never under-counted).
        """
        redis = self._redis
        assert redis is not None
        make = self._settle_op
        ops = [make(o.held.entries, o.held.res_id, o.actual, o.held.amount, o.t, o.want) for o in batch]
        try:
            readings, got = await redis.exchange(ops, reserve)
        except CountersUnavailable as exc:
            if batch:
                self._trip(batch[0].t, f"{exc}; the usage will be written when it answers")
                for o in batch:
                    # Its reservation is in the last figures Redis reported, so the
                    # fail-open share already accounts for it.
                    if o.actual != ZERO:
                        self._queue_replay(o.held.entries, o.held.res_id, o.actual, o.t, o.held.amount)
                    self._done(o, None)
            raise
        except BaseException:
            for o in batch:
                self._done(o, None)
            raise
        for o, r in zip(batch, readings, strict=True):
            self._done(o, r)
        return got

    def _done(self, o: _Outgoing, readings: list[Reading] | None) -> None:
        held = o.held
        if o.want and readings is not None and self._on_settle is not None:
            statuses = [
                self._status(ow, e, r, held.at) for ow, e, r in zip(held.owners, held.entries, readings, strict=True)
            ]
            try:
                self._on_settle(statuses)
            except Exception:
                log.exception("on_settle callback failed")
        if o.done is not None and not o.done.done():
            o.done.set_result(None)

    async def flush(self) -> None:
        """Send the settles waiting for a reserve now (status reads, shutdown)."""
        if self._outbox:
            await self._send_outbox()

    # -- counter-store failure -----------------------------------------------------------

    def _trip(self, t: float, why: str) -> None:
        self._down_until = t + BREAKER_S
        if t - self._last_loud >= LOUD_LOG_EVERY_S:
            self._last_loud = t
            mode = (
                "open: using per-process counters"
                if self._fallback is not None
                else "closed: refusing requests"
            )
            log.error("budget counters unavailable (%s); on_counter_failure is %s", why, mode)

    def _queue_replay(
        self, entries: tuple[Entry, ...], res_id: str, actual: Vec, t: float, amount: Vec
    ) -> None:
        if len(self._replay) < REPLAY_MAX:
            self._replay.append((entries, res_id, actual, t, amount))
        else:
            log.error("budget counters unavailable for too long: dropping usage that could not be recorded")

    async def _flush_replay(self) -> None:
        try:
            while self._replay:
                chunk = self._replay[:SETTLE_BATCH]
                try:
                    if self._redis is not None:
                        make = self._settle_op
                        await self._redis.exchange([make(e, r, a, amt, t, False) for e, r, a, t, amt in chunk])
                    else:
                        for entries, res_id, actual, t, amount in chunk:
                            await self._backend.settle(entries, res_id, actual, t, False, amount)
                except CountersUnavailable:
                    return
                del self._replay[: len(chunk)]
        finally:
            self._flushing = False

    def _unavailable(self, owners: Sequence[_Owner], why: str = "down") -> Refusal:
        url = getattr(self._backend, "url", self.config.counters)
        first = owners[0]
        name = first.name if isinstance(first, Budget) else f"session:{first.session}"
        where = redacted(url)
        if why == "lost":
            what = (
                f"tokenfuse's budget counters in {where} were lost (Redis restarted empty, was flushed or evicted "
                "them) and are being rebuilt from the ledger; until that is done it cannot prove this request "
                f"fits budget '{name}' and refuses it."
            )
        elif why == "stale":
            what = (
                f"tokenfuse cannot reach its budget counters ({where}). on_counter_failure is open, but this "
                f"replica has no recent figure from them for budget '{name}', so it cannot bound what it may "
                "admit and refuses this request."
            )
        elif why == "share":
            what = (
                f"tokenfuse cannot reach its budget counters ({where}). on_counter_failure is open, and this "
                f"replica has used up its share of the last known headroom of budget '{name}', so it refuses "
                "this request."
            )
        else:
            what = (
                f"tokenfuse cannot reach its budget counters ({where}), so it cannot prove this request "
                f"fits budget '{name}' and refuses it (on_counter_failure: closed)."
            )
        return Refusal(
            kind="counters_unavailable",
            budget=name,
            message=(
                f"{what} This is an outage of the gateway's counter store, not of your budget; retry shortly."
            ),
            limit="",
            spent="",
            reserved="",
            requested="",
            resets_at=None,
        )

    # -- refusal messages ---------------------------------------------------------------------

    @staticmethod
    def _fits(short: Shortfall, cap: int, fit: Fit | None) -> int:
        """The largest output limit whose bound fits the refusing counter now (0: none)."""
        if fit is None:
            return 0  # nothing to lower: the request's bound is what it is
        room = cap - short.spent - short.reserved
        return max(0, fit.largest(_within(short.dim, room), fit.requested))

    @staticmethod
    def _fit_text(fits: int, fit: Fit | None, until: str) -> str:
        if fits <= 0:
            return f"Nothing fits {until}: not even this request's input."
        text = f"max_tokens: {fits} would fit"
        if fit is not None and not fit.lower:
            text += " (this key does not let the gateway lower max_tokens for you)"
        elif fit is not None and fits < fit.floor:
            text += f" (below the gateway's floor of {fit.floor} output tokens, so it was not lowered for you)"
        return text + "."

    def _refusal(
        self,
        short: Shortfall,
        entries: Sequence[Entry],
        owners: Sequence[_Owner],
        amount: Vec,
        t: float,
        fit: Fit | None = None,
    ) -> Refusal:
        d = short.dim
        owner = owners[short.index]
        cap = entries[short.index].limits[d]
        limit, spent, reserved = describe(d, cap), describe(d, short.spent), describe(d, short.reserved)
        requested = describe(d, amount[d])
        left = describe(d, max(0, cap - short.spent - short.reserved))
        fits = self._fits(short, cap, fit)
        if isinstance(owner, _Session):
            name = f"session:{owner.session}"
            message = (
                f"Session '{owner.session}' has reached its cap of {limit} "
                f"(used {spent}, in flight {reserved}; this request needs up to {requested}; "
                f"{self._fit_text(fits, fit, 'in this session').rstrip('.')}). "
                "Stop now and do not retry: summarize your progress so far and what remains, "
                "and hand back to the user."
            )
            return Refusal("session_cap", name, message, limit, spent, reserved, requested, None, fits)
        _, resets = owner.window(t)
        if owner.rolling is not None:
            when = f"It is a {owner.window_label} window: headroom returns as older usage ages out of it."
            until = "until older usage ages out of the window"
        elif resets is None:
            when = "This budget never resets; it must be raised to admit more."
            until = "until the budget is raised"
        else:
            when = f"The window resets at {_iso(resets)}."
            until = f"until {_iso(resets)}"
        per = "" if owner.config.window == "total" else f" per {owner.window_label}"
        message = (
            f"Budget '{owner.name}' refused this request: limit {limit}{per}, spent {spent}, "
            f"reserved by requests in flight {reserved}; this request could use up to {requested}, "
            f"more than the {left} left. {self._fit_text(fits, fit, until)} {when} "
            "Retrying the same request will not help before then."
        )
        return Refusal(
            "budget",
            owner.name,
            message,
            limit,
            spent,
            reserved,
            requested,
            None if resets is None else utc(resets),
            fits,
        )

    # -- run-time budgets and status -----------------------------------------------------------------

    def set_config_budgets(self, config: Config) -> None:
        """A reloaded config file (tokenfuse/gateway/reload.py): its budgets replace the
        file's old ones. A budget whose match and window are unchanged keeps counting
        on its counter (a raised limit keeps the spend); a new one is loaded from the ledger."""
        known = {b.ident for b in self._config_budgets} | {b.ident for b in self._runtime}
        self.config = config
        self._config_budgets = compile_budgets(config.budgets, "config")
        self._index = BudgetIndex(self._config_budgets + self._runtime)
        self._load_fresh([b for b in self._config_budgets if b.ident not in known])

    def set_runtime_budgets(self, budgets: list[BudgetConfig]) -> None:
        known = {b.ident for b in self._config_budgets} | {b.ident for b in self._runtime}
        self._runtime = compile_budgets(budgets, "runtime")
        self._index = BudgetIndex(self._config_budgets + self._runtime)
        self._load_fresh([b for b in self._runtime if b.ident not in known])

    def _load_fresh(self, fresh: list[Budget]) -> None:
        # Requests matching a budget wait (self._pending) until its spend is loaded.
        if not fresh:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        fut: asyncio.Future[None] = loop.create_future()
        for b in fresh:
            self._pending[b.ident] = fut

        async def load() -> None:
            try:
                await self.rebuild(fresh)
            except Exception:
                log.exception("could not rebuild new budgets from the ledger; they start from zero")
            finally:
                for b in fresh:
                    if self._pending.get(b.ident) is fut:
                        del self._pending[b.ident]
                fut.set_result(None)

        spawn(load())

    @property
    def budgets(self) -> list[Budget]:
        return self._config_budgets + self._runtime

    async def snapshot(self, now: float | None = None) -> list[BudgetStatus]:
        t = time.time() if now is None else now
        await self.flush()  # this replica's own settles are not left showing as reserved
        budgets = self.budgets
        entries = [b.entry(t) for b in budgets]
        try:
            readings = await self._backend.read(entries, t)
        except CountersUnavailable as exc:
            self._trip(t, str(exc))
            if self._fallback is None:
                raise
            # The last figures Redis reported (spent and reserved together).
            readings = [Reading(self._seen.get(e.key, (t, ZERO))[1], ZERO) for e in entries]
        return [self._status(b, e, r, t) for b, e, r in zip(budgets, entries, readings, strict=True)]

    def _status(self, owner: _Owner, entry: Entry, r: Reading, t: float) -> BudgetStatus:
        if isinstance(owner, _Session):
            return status_from(
                f"session:{owner.session}",
                "session",
                None,
                None,
                entry.limits,
                r.spent,
                r.reserved,
                "session",
            )
        start, resets = owner.window(t)
        return status_from(
            owner.name, owner.window_label, start, resets, entry.limits, r.spent, r.reserved, owner.source
        )

    async def session_snapshot(self, limit: int = 10) -> list[dict[str, object]]:
        t = time.time()
        await self.flush()
        try:
            found = await self._backend.sessions(t)
        except CountersUnavailable:
            if self._fallback is None:
                raise
            found = await self._fallback.sessions(t)
        rows: list[dict[str, object]] = []
        for s in found:
            lim = s.limits
            percent = 0.0
            for d in (0, 1):
                if lim[d] > 0:
                    percent = max(percent, (s.spent[d] + s.reserved[d]) / lim[d] * 100)
            rows.append(
                {
                    "session": s.session,
                    "requests": s.spent[1],
                    "max_requests": None if lim[1] == UNLIMITED else lim[1],
                    "spent_usd": str(from_nano(s.spent[0])),
                    "max_usd": None if lim[0] == UNLIMITED else str(from_nano(lim[0])),
                    "reserved_requests": s.reserved[1],
                    "reserved_usd": str(from_nano(s.reserved[0])),
                    "percent": percent,
                    "expires_at": _iso(s.expires_at),
                }
            )
        rows.sort(key=lambda r: (-float(str(r["percent"])), -int(str(r["requests"]))))
        return rows[:limit]

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._outbox_due_handle is not None:
            self._outbox_due_handle.cancel()
            self._outbox_due_handle = None
        # Settles still waiting go now (what Redis cannot take joins the replay below).
        await self.flush()
        if self._replay and not self._flushing:
            self._flushing = True
            await self._flush_replay()
        await self._backend.close()
        if self._fallback is not None:
            await self._fallback.close()
