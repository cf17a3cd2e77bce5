"""Budget alerts: thresholds, spend-rate projections and refusals, to the log and webhooks.

:meth:`AlertManager.observe` runs on the request path after every settle, and
:meth:`AlertManager.refused` when a budget refuses a request, so both only
compare numbers and append to a bounded queue. A background task
claims each alert once across replicas (a unique row in ``alerts_fired``, or
``SET NX`` in Redis), logs it as one JSON line and POSTs it to each webhook.
A webhook that is down or slow therefore delays other alerts, never requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

import aiohttp

from tokenfuse.aio import spawn
from tokenfuse.config import AlertsConfig, parse_duration
from tokenfuse.ledger.store import StoreConnection

log = logging.getLogger("tokenfuse.alerts")

QUEUE_SIZE = 1000
WEBHOOK_TIMEOUT_S = 5.0
RATE_SAMPLE_EVERY_S = 10.0  # at most one spend sample per budget per interval
RATE_HOUR_S = 3600.0
_DAY_S = 86400

# Kept here rather than in ledger/schema.py so the alert dedupe table has one
# owner; CREATE IF NOT EXISTS makes it safe for every replica to run it.
_DDL = (
    "CREATE TABLE IF NOT EXISTS alerts_fired (budget TEXT NOT NULL, window_key TEXT NOT NULL, "
    "alert TEXT NOT NULL, fired_ts {ts} NOT NULL, PRIMARY KEY (budget, window_key, alert))"
)


class StatusLike(Protocol):
    """The fields of ``tokenfuse.limits.budgets.BudgetStatus`` alerts read."""

    @property
    def name(self) -> str: ...
    @property
    def window(self) -> str: ...
    @property
    def window_start(self) -> datetime | None: ...
    @property
    def resets_at(self) -> datetime | None: ...
    @property
    def limit_usd(self) -> Decimal | None: ...
    @property
    def limit_requests(self) -> int | None: ...
    @property
    def limit_tokens(self) -> dict[str, int]: ...
    @property
    def spent_usd(self) -> Decimal: ...
    @property
    def spent_requests(self) -> int: ...
    @property
    def spent_tokens(self) -> dict[str, int]: ...
    @property
    def source(self) -> str: ...


class RefusingStatusLike(StatusLike, Protocol):
    """A status that also carries what requests in flight hold (``BudgetStatus`` does)."""

    @property
    def reserved_usd(self) -> Decimal: ...
    @property
    def reserved_requests(self) -> int: ...


@dataclass(slots=True)
class RefusalTally:
    """What a budget has refused in this window, read when its alert is sent:
    refusals that arrive before the sender gets to it still count."""

    count: int
    largest_usd: Decimal


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str  # "threshold" | "rate" | "refusing"
    budget: str
    window: str
    window_key: str  # identifies this window of this budget, for dedupe
    label: str  # the threshold ("0.75") or "rate"
    metric: str  # usd | requests | tokens.<class>
    spent: str
    limit: str
    percent: float
    window_start: datetime | None
    resets_at: datetime | None
    ts: float
    ttl_s: int | None  # how long the dedupe claim must outlive the window
    projected_exhaustion: datetime | None = None
    crossed: tuple[str, ...] = ()  # threshold: every threshold this one alert stands for
    rate_per_hour: str | None = None  # the burn rate behind projected_exhaustion
    reserved: str | None = None  # refusing: held by requests in flight
    in_flight: int | None = None
    refusals: RefusalTally | None = None

    @property
    def claims(self) -> tuple[str, ...]:
        """The dedupe labels this alert takes: the first is the one that decides."""
        return (self.label, *(c for c in reversed(self.crossed) if c != self.label))

    def payload(self) -> dict[str, Any]:
        reset = _iso(self.resets_at)
        unit = "$" if self.metric == "usd" else ""
        what = f"{unit}{self.spent} of {unit}{self.limit} spent" if self.metric == "usd" else (
            f"{self.metric} {self.spent} of {self.limit} used"
        )
        if self.kind == "refusing":
            tally = self.refusals
            text = (
                f"tokenfuse: budget {self.budget} is now refusing requests: {what}, "
                f"{unit}{self.reserved} held by {self.in_flight} in-flight "
                f"request{'' if self.in_flight == 1 else 's'}"
            )
            if tally is not None:
                text += f"; largest refused request needed ${_money(tally.largest_usd)}"
        elif self.kind == "rate":
            when = _iso(self.projected_exhaustion) or "soon"
            text = (
                f"tokenfuse: budget {self.budget} will run out at its last-hour rate around {when}, before its "
                f"{self.window} window ends ({self.metric} {self.spent} of {self.limit} spent)"
            )
        else:
            text = (
                f"tokenfuse: budget {self.budget} reached {_pct(self.label)} of its {self.window} limit "
                f"({self.metric} {self.spent} of {self.limit}, {self.percent:.1f}%)"
            )
            if len(self.crossed) > 1:
                text += f"; crossed {', '.join(_pct(c) for c in self.crossed)} at once"
            if self.projected_exhaustion is not None:
                text += (
                    f"; at the last hour's rate ({unit}{self.rate_per_hour} an hour) it runs out around "
                    f"{_iso(self.projected_exhaustion)}"
                )
        if reset:
            text += f"; resets {reset}"
        return {
            "text": text,
            "kind": self.kind,
            "budget": self.budget,
            "threshold": float(self.label) if self.kind == "threshold" else None,
            "thresholds_crossed": [float(c) for c in self.crossed],
            "percent": round(self.percent, 2),
            "metric": self.metric,
            "spent": self.spent,
            "limit": self.limit,
            "window": self.window,
            "window_start": _iso(self.window_start),
            "resets_at": reset,
            "projected_exhaustion": _iso(self.projected_exhaustion),
            "rate_per_hour": self.rate_per_hour,
            "reserved": self.reserved,
            "in_flight": self.in_flight,
            "refused_requests": None if self.refusals is None else self.refusals.count,
            "largest_refused_usd": None if self.refusals is None else _money(self.refusals.largest_usd),
            "ts": datetime.fromtimestamp(self.ts, UTC).isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Notice:
    """Any other alert (a guard's finding), sent and deduped like budget alerts:
    at most once per (``budget``, ``window_key``, ``label``) across replicas."""

    budget: str  # the dedupe subject, e.g. "guard:loop:session s1"
    window_key: str
    label: str
    ts: float
    ttl_s: int | None
    body: dict[str, Any]  # must carry a Slack-compatible "text"
    event: str = "notice"

    def payload(self) -> dict[str, Any]:
        return dict(self.body)


def _iso(d: datetime | None) -> str | None:
    return None if d is None else d.astimezone(UTC).isoformat()


def _pct(label: str) -> str:
    pct = Decimal(label) * 100
    return f"{int(pct)}%" if pct == pct.to_integral_value() else f"{pct.normalize():f}%"


def _rolling_seconds(window: str) -> int | None:
    if not window.startswith("rolling"):
        return None
    return parse_duration(window[len("rolling") :].lstrip(": ").strip())


def window_identity(status: StatusLike, now: float) -> tuple[str, int | None, int | None]:
    """(window key, dedupe TTL seconds, rolling duration) for a budget status.

    A rolling window has no fixed start, so "once per window" means once per
    consecutive span of the window's length.
    """
    rolling = _rolling_seconds(status.window)
    if rolling is not None:
        return f"rolling:{int(now // rolling)}", max(35 * _DAY_S, 2 * rolling), rolling
    if status.window == "total" or status.window_start is None:
        return "total", None, None
    return status.window_start.astimezone(UTC).isoformat(), 35 * _DAY_S, None


def metrics(status: StatusLike) -> list[tuple[str, Decimal, Decimal]]:
    """(metric, spent, limit) for every limit the budget has."""
    out: list[tuple[str, Decimal, Decimal]] = []
    if status.limit_usd is not None and status.limit_usd > 0:
        out.append(("usd", status.spent_usd, status.limit_usd))
    if status.limit_requests:
        out.append(("requests", Decimal(status.spent_requests), Decimal(status.limit_requests)))
    for cls, lim in sorted(status.limit_tokens.items()):
        if lim > 0:
            out.append((f"tokens.{cls}", Decimal(status.spent_tokens.get(cls, 0)), Decimal(lim)))
    return out


@dataclass(slots=True)
class _BudgetTrack:
    window_key: str
    window_end: float  # epoch seconds; inf for a total budget
    fired: set[str] = field(default_factory=set)
    samples: deque[tuple[float, tuple[Decimal, ...]]] = field(default_factory=deque)
    refusals: RefusalTally | None = None  # set once the budget refused in this window


def _window_end(status: StatusLike, now: float, rolling: int | None) -> float:
    if rolling is not None:
        return float((int(now // rolling) + 1) * rolling)
    if status.window == "total" or status.resets_at is None:
        return float("inf")
    return status.resets_at.timestamp()


class AlertManager:
    def __init__(
        self,
        config: AlertsConfig,
        store_url: str,
        redis_url: str | None = None,
        *,
        rate_min_span_s: float = 300.0,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.config = config
        self.store_url = store_url
        self.redis_url = redis_url
        self.rate_min_span_s = rate_min_span_s
        self.thresholds = [(Decimal(str(t)), f"{Decimal(str(t)).normalize():f}") for t in config.thresholds]
        self.queue: deque[Alert | Notice] = deque(maxlen=queue_size)
        self.dropped = 0
        self.sent: list[dict[str, Any]] = []  # payloads this replica delivered, newest last (bounded)
        self._tracks: dict[str, _BudgetTrack] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[Any] | None = None
        self._stopping = False
        self._last_drop_warning = 0.0
        self._http: aiohttp.ClientSession | None = None
        self._redis: Any = None
        self._store = StoreConnection(store_url, on_open=_create_table)

    # -- request path -------------------------------------------------------

    def observe(self, statuses: Sequence[StatusLike], now: float | None = None) -> None:
        """Queue the alerts these statuses newly cross. No I/O, no awaiting."""
        ts = time.time() if now is None else now
        for status in statuses:
            self._observe_one(status, ts)

    def _track(self, status: StatusLike, now: float) -> tuple[_BudgetTrack, str, int | None, int | None]:
        key, ttl, rolling = window_identity(status, now)
        track = self._tracks.get(status.name)
        if track is None or track.window_key != key:
            track = self._tracks[status.name] = _BudgetTrack(key, _window_end(status, now, rolling))
        return track, key, ttl, rolling

    def _observe_one(self, status: StatusLike, now: float) -> None:
        if status.source == "session":
            return  # session caps refuse with their own message; alerting per agent run would flood
        mets = metrics(status)
        if not mets:
            return
        track, key, ttl, rolling = self._track(status, now)
        self._sample(track, mets, now)
        i, (metric, spent, limit) = max(enumerate(mets), key=lambda m: m[1][1] / m[1][2])
        fraction = spent / limit
        # A jump past several thresholds is one event: one message naming them all.
        crossed = tuple(
            label for threshold, label in self.thresholds if fraction >= threshold and label not in track.fired
        )
        if crossed:
            track.fired.update(crossed)
            rate = self._burn(track, i, spent, now)
            if rate is not None and rate > 0 and spent < limit:
                seconds_left = (limit - spent) / rate
                projected: datetime | None = datetime.fromtimestamp(now + float(seconds_left), UTC)
                per_hour: str | None = _money(rate * 3600) if metric == "usd" else str(int(rate * 3600))
            else:
                projected, per_hour = None, None
            self._enqueue(
                status, "threshold", key, crossed[-1], metric, spent, limit, now, ttl, projected,
                crossed=crossed, rate_per_hour=per_hour,
            )
        if self.config.rate_check and "rate" not in track.fired and fraction < 1:
            self._rate(status, track, mets, now, key, ttl, rolling)

    def refusal_seen(self, budget: str, needed_usd: Decimal, now: float | None = None) -> bool:
        """Count a refusal by ``budget`` if its refusing alert for this window is
        already queued or sent; False means call :meth:`refused` with its status.

        The request path calls this on every refusal, so it touches no counters:
        only the first refusal of a window costs the caller a status read."""
        ts = time.time() if now is None else now
        track = self._tracks.get(budget)
        if track is None or track.refusals is None or ts >= track.window_end:
            return False
        track.refusals.count += 1
        track.refusals.largest_usd = max(track.refusals.largest_usd, needed_usd)
        return True

    def refused(self, status: RefusingStatusLike, needed_usd: Decimal, now: float | None = None) -> None:
        """Queue one alert per window when ``status``'s budget first refuses a
        request that needed up to ``needed_usd``. No I/O, no awaiting.

        Threshold alerts watch billed spend, which a hard limit keeps under the
        cap, so without this a refusing budget (or one added at run time that
        refuses at once) would never say so."""
        ts = time.time() if now is None else now
        if status.source == "session":
            return  # session caps tell the agent themselves
        track, key, ttl, _ = self._track(status, ts)
        if track.refusals is not None:
            track.refusals.count += 1
            track.refusals.largest_usd = max(track.refusals.largest_usd, needed_usd)
            return
        track.refusals = RefusalTally(1, needed_usd)
        mets = metrics(status)
        if status.limit_usd is not None and status.limit_usd > 0:
            metric, spent, limit = "usd", status.spent_usd, status.limit_usd
        elif mets:
            metric, spent, limit = max(mets, key=lambda m: m[1] / m[2])
        else:
            return  # no limit at all: nothing it could refuse on
        track.fired.add("refusing")
        self._push(
            Alert(
                kind="refusing",
                budget=status.name,
                window=status.window,
                window_key=key,
                label="refusing",
                metric=metric,
                spent=_money(spent) if metric == "usd" else str(int(spent)),
                limit=_money(limit) if metric == "usd" else str(int(limit)),
                percent=float(spent / limit * 100),
                window_start=status.window_start,
                resets_at=status.resets_at,
                ts=ts,
                ttl_s=ttl,
                reserved=_money(status.reserved_usd),
                in_flight=status.reserved_requests,
                refusals=track.refusals,
            ),
            ts,
        )

    @staticmethod
    def _sample(track: _BudgetTrack, mets: list[tuple[str, Decimal, Decimal]], now: float) -> None:
        samples = track.samples
        if samples and now - samples[-1][0] < RATE_SAMPLE_EVERY_S:
            return
        samples.append((now, tuple(m[1] for m in mets)))
        while samples and now - samples[0][0] > RATE_HOUR_S:
            samples.popleft()

    def _burn(self, track: _BudgetTrack, i: int, spent: Decimal, now: float) -> Decimal | None:
        """Metric ``i``'s spend per second over the last hour, if the samples span long enough."""
        if not track.samples:
            return None
        first_ts, first = track.samples[0]
        span = now - first_ts
        if span < self.rate_min_span_s or i >= len(first):
            return None
        return (spent - first[i]) / Decimal(str(span))

    def _rate(
        self,
        status: StatusLike,
        track: _BudgetTrack,
        mets: list[tuple[str, Decimal, Decimal]],
        now: float,
        key: str,
        ttl: int | None,
        rolling: int | None,
    ) -> None:
        samples = track.samples
        if not samples or samples[-1][0] != now:
            return  # sampled within the last interval: nothing new to project from
        first_ts, first = samples[0]
        span = now - first_ts
        if span < self.rate_min_span_s or len(first) != len(mets):
            return
        if rolling is not None:
            horizon = float(rolling)
        elif status.resets_at is not None:
            horizon = status.resets_at.timestamp() - now
        else:
            return  # a total budget never ends; the thresholds cover it
        for (metric, spent, limit), before in zip(mets, first, strict=True):
            rate = (spent - before) / Decimal(str(span))  # per second
            if rate <= 0:
                continue
            seconds_left = (limit - spent) / rate
            projected = (
                rate * Decimal(str(horizon)) if rolling is not None else spent + rate * Decimal(str(horizon))
            )
            if projected >= limit:
                track.fired.add("rate")
                when = datetime.fromtimestamp(now + float(seconds_left), UTC)
                self._enqueue(status, "rate", key, "rate", metric, spent, limit, now, ttl, when)
                return

    def _enqueue(
        self,
        status: StatusLike,
        kind: str,
        key: str,
        label: str,
        metric: str,
        spent: Decimal,
        limit: Decimal,
        now: float,
        ttl: int | None,
        projected: datetime | None = None,
        *,
        crossed: tuple[str, ...] = (),
        rate_per_hour: str | None = None,
    ) -> None:
        self._push(
            Alert(
                kind=kind,
                budget=status.name,
                window=status.window,
                window_key=key,
                label=label,
                metric=metric,
                spent=_money(spent) if metric == "usd" else str(int(spent)),
                limit=_money(limit) if metric == "usd" else str(int(limit)),
                percent=float(spent / limit * 100),
                window_start=status.window_start,
                resets_at=status.resets_at,
                ts=now,
                ttl_s=ttl,
                projected_exhaustion=projected,
                crossed=crossed,
                rate_per_hour=rate_per_hour,
            ),
            now,
        )

    def notify(
        self,
        subject: str,
        label: str,
        body: dict[str, Any],
        *,
        event: str,
        window_s: int = 3600,
        now: float | None = None,
    ) -> None:
        """Queue any alert (``body`` with a ``text``), sent at most once per
        ``subject`` and ``label`` per ``window_s`` window. No I/O, no awaiting."""
        ts = time.time() if now is None else now
        key = f"{int(ts // window_s)}"
        self._push(Notice(subject, key, label, ts, 2 * window_s, body, event), ts)

    def _push(self, alert: Alert | Notice, now: float) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
            if now - self._last_drop_warning > 60:
                self._last_drop_warning = now
                log.warning("alert queue full (%d); dropping the oldest alert", self.queue.maxlen)
        self.queue.append(alert)
        if self._wake is not None:
            self._wake.set()

    # -- background sender ---------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        if self.queue:
            self._wake.set()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        if self.redis_url:
            import redis.asyncio as aioredis

            self._redis = aioredis.Redis.from_url(self.redis_url)
        self._task = spawn(self._run())

    async def stop(self, drain_timeout_s: float = 2.0) -> None:
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            assert self._wake is not None
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(task), drain_timeout_s)
            except TimeoutError:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        await asyncio.to_thread(self._store.close)

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            while self.queue:
                alert = self.queue.popleft()
                try:
                    await self._deliver(alert)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("alert for budget %s could not be delivered", alert.budget)
            if self._stopping:
                return
            self._wake.clear()
            await self._wake.wait()

    async def _deliver(self, alert: Alert | Notice) -> None:
        if not await self._claim(alert):
            return  # another replica fired it for this window
        payload = alert.payload()
        event = alert.event if isinstance(alert, Notice) else "budget_alert"
        log.warning(json.dumps({"event": event, **payload}, separators=(",", ":")))
        self.sent.append(payload)
        del self.sent[:-100]
        if self.config.webhooks:
            await asyncio.gather(*(self._post(w.url, w.headers, payload) for w in self.config.webhooks))

    async def _post(self, url: str, headers: dict[str, str], payload: dict[str, Any]) -> None:
        assert self._http is not None
        try:
            async with self._http.post(url, json=payload, headers=headers) as resp:
                if resp.status >= 400:
                    log.warning("alert webhook %s answered HTTP %d", _safe_url(url), resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("alert webhook %s failed: %s", _safe_url(url), exc.__class__.__name__)

    async def _claim(self, alert: Alert | Notice) -> bool:
        # One alert for several thresholds claims each of them, so another replica
        # that crosses a lower one later stays quiet; the highest one decides.
        labels = alert.claims if isinstance(alert, Alert) else (alert.label,)
        try:
            won = [await self._claim_one(alert, label) for label in labels]
            return won[0]
        except Exception as exc:
            # Better a duplicate alert than a lost one.
            log.warning("cannot record alert for budget %s (%s); sending it anyway", alert.budget, exc)
            return True

    async def _claim_one(self, alert: Alert | Notice, label: str) -> bool:
        if self._redis is not None:
            key = f"tokenfuse:alert:{alert.budget}:{alert.window_key}:{label}"
            return bool(await self._redis.set(key, str(alert.ts), nx=True, ex=alert.ttl_s))
        return await asyncio.to_thread(self._claim_in_store, alert, label)

    def _claim_in_store(self, alert: Alert | Notice, label: str) -> bool:
        p = self._store.p
        count, _ = self._store.execute(
            f"INSERT INTO alerts_fired (budget, window_key, alert, fired_ts) VALUES ({p}, {p}, {p}, {p}) "
            "ON CONFLICT DO NOTHING",
            (alert.budget, alert.window_key, label, alert.ts),
        )
        return count == 1


def _create_table(conn: Any, dialect: str) -> None:
    cur = conn.cursor()
    if dialect == "sqlite":
        cur.execute(_DDL.format(ts="REAL"))
        return
    # Two replicas running CREATE TABLE IF NOT EXISTS at once can still collide
    # in PostgreSQL's catalog; serialise them.
    cur.execute("SELECT pg_advisory_lock(7482194)")
    try:
        cur.execute(_DDL.format(ts="DOUBLE PRECISION"))
    finally:
        cur.execute("SELECT pg_advisory_unlock(7482194)")


def _money(d: Decimal) -> str:
    cents = d.quantize(Decimal("0.01"))
    return f"{cents:f}" if cents == d else f"{d.normalize():f}"


def _safe_url(url: str) -> str:
    # Webhook URLs often embed a secret path (Slack); log only scheme and host.
    head, _, rest = url.partition("://")
    return f"{head}://{rest.split('/', 1)[0]}/..." if rest else url
