"""Admit or refuse a request against every budget and session cap it falls under.

`reserve` holds the request's upper bound against all its counters at once
(all or none) and refuses when the bound does not fit the headroom of any of
them: it never shrinks a reservation to fit. `settle` replaces the
reservation by what the provider billed; `release` drops it for a request
that was never billed.
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

from tokenfuse.aio import spawn
from tokenfuse.config import BudgetConfig, Config, SessionCaps
from tokenfuse.limits.bounds import Bound
from tokenfuse.limits.budgets import Budget, BudgetIndex, BudgetStatus, compile_budgets, status_from, utc
from tokenfuse.limits.context import RequestContext
from tokenfuse.limits.counters import (
    DIMS,
    NDIMS,
    UNLIMITED,
    ZERO,
    Counters,
    CountersUnavailable,
    Entry,
    Reading,
    Seed,
    Shortfall,
    Vec,
    from_nano,
    to_nano,
)
from tokenfuse.limits.memory import MemoryCounters
from tokenfuse.limits.rebuild import ledger_seeds
from tokenfuse.usage import Usage

log = logging.getLogger("tokenfuse.limits")

# After a counter-store failure, skip it for this long: a dead Redis must not
# cost every request a connect timeout.
BREAKER_S = 1.0
LOUD_LOG_EVERY_S = 30.0
REPLAY_MAX = 100_000


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
    entries: tuple[Entry, ...]
    owners: tuple[_Owner, ...]
    backend: Counters
    at: float
    amount: Vec


@dataclass(slots=True)
class Admission:
    ok: bool
    refusal: Refusal | None = None
    held: _Held | None = field(default=None, repr=False)


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
        self._unseeded: list[Seed] = []
        self._pending: dict[str, asyncio.Future[None]] = {}

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
    ) -> Limiter:
        """Build the backend named by ``config.counters`` and rebuild open windows from the ledger.

        ``prefix`` namespaces Redis keys (one per deployment sharing a Redis).
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
        if rebuild:
            await lim.rebuild(lim._config_budgets, now=now, sessions=True)
        return lim

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
        try:
            seeds = await asyncio.to_thread(ledger_seeds, self.config.store, list(budgets), t, idle)
        except Exception as exc:
            raise RuntimeError(
                f"cannot rebuild budget counters from the ledger at {self.config.store.split('@')[-1]}: {exc}; "
                "budgets would restart from zero, so tokenfuse will not start until the store is readable"
            ) from exc
        if self._fallback is not None:
            await self._fallback.seed(seeds, t)
        try:
            return await self._backend.seed(seeds, t)
        except CountersUnavailable as exc:
            self._unseeded += seeds
            self._trip(t, f"could not load rebuilt budget counters ({exc}); will retry when it answers")
            return 0

    # -- the hot path ---------------------------------------------------------------

    async def reserve(
        self,
        ctx: RequestContext,
        bound: Bound,
        *,
        session_caps: SessionCaps | None = None,
        now: float | None = None,
    ) -> Admission:
        budgets = self._index.match(ctx) if self._index else []
        capped = ctx.session is not None and _capped(session_caps)
        if not budgets and not capped:
            return Admission(True)
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
        amount = bound_vector(bound)
        res_id = f"{self._pid}{next(self._seq)}"
        ent = tuple(entries)
        deadline: float | None = None
        while True:
            backend: Counters = self._backend
            if self._memory is not None:
                short = self._memory.reserve_now(ent, res_id, amount, t, self._ttl)
            else:
                try:
                    short = await self._remote_reserve(ent, res_id, amount, t)
                except CountersUnavailable as exc:
                    if not isinstance(exc, _BreakerOpen):
                        self._trip(t, str(exc))
                    if self._fallback is None:
                        return Admission(False, self._unavailable(owners))
                    backend = self._fallback
                    short = self._fallback.reserve_now(ent, res_id, amount, t, self._ttl)
            if short is None:
                return Admission(True, held=_Held(res_id, ent, tuple(owners), backend, t, amount))
            # Refusing only because other requests' upper bounds are still held
            # would waste headroom they are about to give back: wait for them.
            if not short.reserved or short.spent + amount[short.dim] > ent[short.index].limits[short.dim]:
                break
            clock = time.monotonic()
            if deadline is None:
                deadline = clock + self._admission_wait
            if clock >= deadline:
                break
            await asyncio.sleep(min(ADMISSION_POLL_S, deadline - clock))
            if now is None:
                t = time.time()
        return Admission(False, self._refusal(short, ent, owners, amount, t))

    async def _remote_reserve(
        self, ent: tuple[Entry, ...], res_id: str, amount: Vec, t: float
    ) -> Shortfall | None:
        if t < self._down_until:
            raise _BreakerOpen("the counter store failed moments ago")
        if self._unseeded:
            seeds, self._unseeded = self._unseeded, []
            try:
                await self._backend.seed(seeds, t)
            except CountersUnavailable:
                self._unseeded = seeds + self._unseeded
                raise
        short = await self._backend.reserve(ent, res_id, amount, t, self._ttl)
        if self._replay and not self._flushing:
            self._flushing = True
            spawn(self._flush_replay())
        return short

    async def settle(
        self, admission: Admission, usage: Usage, cost: Decimal, *, now: float | None = None
    ) -> None:
        held = admission.held
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
        if isinstance(held.backend, MemoryCounters):
            readings = held.backend.settle_now(held.entries, held.res_id, actual, t, want)
            if held.backend is not self._backend and actual != ZERO:
                # Spent through the fail-open fallback: Redis hears of it when it is back.
                self._queue_replay(held.entries, held.res_id, actual, t, held.amount)
        else:
            try:
                readings = await held.backend.settle(held.entries, held.res_id, actual, t, want, held.amount)
            except CountersUnavailable as exc:
                self._trip(t, f"{exc}; the usage will be written when it answers")
                readings = None
                if actual != ZERO:
                    self._queue_replay(held.entries, held.res_id, actual, t, held.amount)
                    if self._fallback is not None:
                        readings = self._fallback.settle_now(held.entries, held.res_id, actual, t, want)
        if want and readings is not None and self._on_settle is not None:
            statuses = [
                self._status(o, e, r, held.at)
                for o, e, r in zip(held.owners, held.entries, readings, strict=True)
            ]
            try:
                self._on_settle(statuses)
            except Exception:
                log.exception("on_settle callback failed")

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
                entries, res_id, actual, t, amount = self._replay[0]
                try:
                    await self._backend.settle(entries, res_id, actual, t, False, amount)
                except CountersUnavailable:
                    return
                self._replay.pop(0)
        finally:
            self._flushing = False

    def _unavailable(self, owners: Sequence[_Owner]) -> Refusal:
        url = getattr(self._backend, "url", self.config.counters)
        from tokenfuse.limits.redis import redacted

        first = owners[0]
        name = first.name if isinstance(first, Budget) else f"session:{first.session}"
        return Refusal(
            kind="counters_unavailable",
            budget=name,
            message=(
                f"tokenfuse cannot reach its budget counters ({redacted(url)}), so it cannot prove this request "
                f"fits budget '{name}' and refuses it (on_counter_failure: closed). "
                "This is an outage of the gateway's counter store, not of your budget; retry shortly."
            ),
            limit="",
            spent="",
            reserved="",
            requested="",
            resets_at=None,
        )

    # -- refusal messages ---------------------------------------------------------------------

    def _refusal(
        self, short: Shortfall, entries: Sequence[Entry], owners: Sequence[_Owner], amount: Vec, t: float
    ) -> Refusal:
        d = short.dim
        owner = owners[short.index]
        cap = entries[short.index].limits[d]
        limit, spent, reserved = describe(d, cap), describe(d, short.spent), describe(d, short.reserved)
        requested = describe(d, amount[d])
        left = describe(d, max(0, cap - short.spent - short.reserved))
        if isinstance(owner, _Session):
            name = f"session:{owner.session}"
            message = (
                f"Session '{owner.session}' has reached its cap of {limit} "
                f"(used {spent}, in flight {reserved}; this request needs up to {requested}). "
                "Stop now and do not retry: summarize your progress so far and what remains, "
                "and hand back to the user."
            )
            return Refusal("session_cap", name, message, limit, spent, reserved, requested, None)
        _, resets = owner.window(t)
        if owner.rolling is not None:
            when = f"It is a {owner.window_label} window: headroom returns as older usage ages out of it."
        elif resets is None:
            when = "This budget never resets; it must be raised to admit more."
        else:
            when = f"The window resets at {_iso(resets)}."
        per = "" if owner.config.window == "total" else f" per {owner.window_label}"
        message = (
            f"Budget '{owner.name}' refused this request: limit {limit}{per}, spent {spent}, "
            f"reserved by requests in flight {reserved}; this request could use up to {requested}, "
            f"more than the {left} left. {when} Retrying will not help before then."
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
        )

    # -- run-time budgets and status -----------------------------------------------------------------

    def set_runtime_budgets(self, budgets: list[BudgetConfig]) -> None:
        known = {b.ident for b in self._config_budgets} | {b.ident for b in self._runtime}
        self._runtime = compile_budgets(budgets, "runtime")
        self._index = BudgetIndex(self._config_budgets + self._runtime)
        fresh = [b for b in self._runtime if b.ident not in known]
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
                log.exception("could not rebuild run-time budgets from the ledger; they start from zero")
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
        budgets = self.budgets
        entries = [b.entry(t) for b in budgets]
        try:
            readings = await self._backend.read(entries, t)
        except CountersUnavailable as exc:
            self._trip(t, str(exc))
            if self._fallback is None:
                raise
            readings = await self._fallback.read(entries, t)
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
        if self._replay and not self._flushing:
            self._flushing = True
            await self._flush_replay()
        await self._backend.close()
        if self._fallback is not None:
            await self._fallback.close()
