"""Budgets as the limiter uses them: which requests they match, and their windows.

Calendar windows are UTC: a minute, hour or day starts on its boundary, a
week on Monday 00:00, a month on the 1st at 00:00. ``total`` never resets. A
rolling window is kept as buckets of 1/60 of its length; the counter covers
the last 61 buckets, so it may count up to one bucket's worth of older spend
(it errs towards refusing, never towards overspending).

``match.model`` is compared in canonical form (`tokenfuse.pricing.identity`):
the configured name or glob is canonicalised once when the budget is
compiled, the request's or ledger row's model on every match, so every
spelling of a model counts against the same per-model budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fnmatch import fnmatchcase

from tokenfuse.config import BudgetConfig
from tokenfuse.limits.context import RequestContext
from tokenfuse.limits.counters import DIMS, NDIMS, TOKEN_DIMS, UNLIMITED, Entry, Vec, from_nano, to_nano
from tokenfuse.pricing import MAX_MODEL_NAME, canonical_model, canonical_pattern

FIXED_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400, "week": 7 * 86400}
ROLLING_BUCKETS = 60
# Counters outlive their window by this much, so a late settle still finds them.
KEY_MARGIN_S = 3600
_MATCH_FIELDS = ("key", "principal", "workflow", "session", "model", "protocol", "team", "tags")
# Match fields added after budgets were first counted: left out of a budget's
# identity while unset, so upgrading keeps every existing counter.
_LATER_FIELDS = ("team", "tags")


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    name: str
    window: str
    window_start: datetime | None
    resets_at: datetime | None  # None for total; rolling: None, described as "rolling 1h"
    limit_usd: Decimal | None
    limit_requests: int | None
    limit_tokens: dict[str, int]
    spent_usd: Decimal
    spent_requests: int
    spent_tokens: dict[str, int]
    reserved_usd: Decimal
    reserved_requests: int
    reserved_tokens: dict[str, int]
    percent: float  # max over limited dimensions of spent/limit*100
    source: str  # "config" | "runtime" | "session"


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def calendar_window(kind: str, now: float) -> tuple[float, float]:
    """``(start, end)`` in epoch seconds of the calendar window holding ``now``."""
    if kind in ("minute", "hour", "day"):
        size = FIXED_SECONDS[kind]
        start = math.floor(now / size) * size
        return float(start), float(start + size)
    if kind == "week":
        day = math.floor(now / 86400)
        monday = day - (day + 3) % 7  # 1970-01-01 was a Thursday
        return float(monday * 86400), float((monday + 7) * 86400)
    if kind == "month":
        t = utc(now)
        first = datetime(t.year, t.month, 1, tzinfo=UTC)
        after = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
        return first.timestamp(), after.timestamp()
    raise ValueError(f"{kind!r} is not a calendar window")


def format_duration(seconds: int) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def limits_vector(cfg: BudgetConfig) -> Vec:
    lim = cfg.limit
    tokens = lim.tokens or {}
    return (
        UNLIMITED if lim.usd is None else to_nano(lim.usd),
        UNLIMITED if lim.requests is None else lim.requests,
        *(tokens.get(d, UNLIMITED) for d in TOKEN_DIMS),
    )


def _identity(cfg: BudgetConfig) -> str:
    # The counter key changes when what the budget counts changes (its match or
    # window), not when its limit is raised, so raising a limit keeps the spend.
    match = cfg.match.model_dump(mode="json")
    for f in _LATER_FIELDS:
        if match.get(f) is None:
            match.pop(f, None)
    spec = json.dumps({"m": match, "w": str(cfg.window)}, sort_keys=True)
    return f"{cfg.name}:{hashlib.sha256(spec.encode()).hexdigest()[:10]}"


class Budget:
    """A compiled budget: its match, its limits as a vector and its current window."""

    __slots__ = ("_end", "_entry", "_start", "config", "ident", "limits", "match", "rolling", "source")

    def __init__(self, config: BudgetConfig, source: str = "config") -> None:
        self.config = config
        self.source = source
        self.ident = _identity(config)
        self.limits = limits_vector(config)
        self.rolling: int | None = config.rolling_seconds
        m = config.match
        # (field, accepted values): any value matches; model values are globs.
        self.match: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
            (f, tuple(canonical_pattern(v) for v in vs) if f == "model" else vs)
            for f in _MATCH_FIELDS
            if (vs := m.values(f)) is not None
        )
        self._end = -math.inf
        self._start: float | None = None
        self._entry: Entry | None = None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def window_label(self) -> str:
        if self.rolling is not None:
            return f"rolling {format_duration(self.rolling)}"
        return str(self.config.window)

    def matches(self, ctx: RequestContext) -> bool:
        for f, want in self.match:
            if f == "tags":
                if not any(t in want for t in ctx.tags):
                    return False
                continue
            if not _field_matches(f, ctx.field(f), want):
                return False
        return True

    def matches_row(self, row: dict[str, str | None]) -> bool:
        """The same test on a ledger row (tags stored comma-joined)."""
        for f, want in self.match:
            got = row.get(f)
            if f == "tags":
                if not got or not any(t in want for t in got.split(",")):
                    return False
                continue
            if not _field_matches(f, got, want):
                return False
        return True

    def bucket_seconds(self) -> int:
        assert self.rolling is not None
        return max(1, math.ceil(self.rolling / ROLLING_BUCKETS))

    def window(self, now: float) -> tuple[float | None, float | None]:
        """``(start, resets_at)``; rolling: (now - length, None); total: (None, None)."""
        if self.rolling is not None:
            return now - self.rolling, None
        if self.config.window == "total":
            return None, None
        if now >= self._end or self._start is None or now < self._start:
            self._start, self._end = calendar_window(str(self.config.window), now)
        return self._start, self._end

    def entry(self, now: float) -> Entry:
        if self.rolling is not None:
            if self._entry is None:
                b = self.bucket_seconds()
                nb = math.ceil(self.rolling / b)
                self._entry = Entry(
                    f"b:{self.ident}:r",
                    self.limits,
                    rolling_bucket_s=b,
                    rolling_buckets=nb,
                    idle_s=float(self.rolling + KEY_MARGIN_S),
                )
            return self._entry
        if self.config.window == "total":
            if self._entry is None:
                self._entry = Entry(f"b:{self.ident}:total", self.limits)
            return self._entry
        if self._entry is None or now >= self._end or self._start is None or now < self._start:
            start, end = self.window(now)
            assert start is not None and end is not None
            self._entry = Entry(f"b:{self.ident}:{int(start)}", self.limits, expire_at=end + KEY_MARGIN_S)
        return self._entry

    def rolling_start(self, now: float) -> float:
        """Start of the oldest bucket a rolling counter still holds."""
        b = self.bucket_seconds()
        nb = math.ceil((self.rolling or 0) / b)
        return float((math.floor(now / b) - nb) * b)


def _field_matches(field: str, got: str | None, want: tuple[str, ...]) -> bool:
    if got is None:
        return False
    if field == "model":
        model = canonical_model(got)
        return any(fnmatchcase(model, w) for w in want)
    return got in want


def compile_budgets(configs: Iterable[BudgetConfig], source: str) -> list[Budget]:
    return [Budget(c, source) for c in configs]


class BudgetIndex:
    """Which budgets a request matches, with the answer cached per identity.

    The cache key leaves out the session (a new one per agent run would make
    the cache useless); budgets that match on a session are checked directly.
    """

    _CACHE_MAX = 20_000

    def __init__(self, budgets: Sequence[Budget]) -> None:
        self.budgets = list(budgets)
        self._plain = [b for b in self.budgets if not any(f == "session" for f, _ in b.match)]
        self._by_session = [b for b in self.budgets if b not in self._plain]
        self._cache: dict[tuple[str, str, str, str, str, str | None, tuple[str, ...]], list[Budget]] = {}

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def match(self, ctx: RequestContext) -> list[Budget]:
        k = (ctx.key_name, ctx.principal, ctx.workflow, ctx.model, ctx.protocol, ctx.team, ctx.tags)
        hit = self._cache.get(k)
        if hit is None:
            hit = [b for b in self._plain if b.matches(ctx)]
            if len(ctx.model) <= MAX_MODEL_NAME:  # never hold a client's oversized string
                if len(self._cache) >= self._CACHE_MAX:
                    self._cache.clear()
                self._cache[k] = hit
        if self._by_session and ctx.session is not None:
            return hit + [b for b in self._by_session if b.matches(ctx)]
        return hit


def status_from(
    name: str,
    window: str,
    start: float | None,
    resets: float | None,
    limits: Vec,
    spent: Vec,
    reserved: Vec,
    source: str,
) -> BudgetStatus:
    percent = 0.0
    for d in range(NDIMS):
        if limits[d] > 0:
            percent = max(percent, spent[d] / limits[d] * 100)
        elif limits[d] == 0 and spent[d] > 0:
            percent = max(percent, 100.0)
    return BudgetStatus(
        name=name,
        window=window,
        window_start=None if start is None else utc(start),
        resets_at=None if resets is None else utc(resets),
        limit_usd=None if limits[0] == UNLIMITED else from_nano(limits[0]),
        limit_requests=None if limits[1] == UNLIMITED else limits[1],
        limit_tokens={d: limits[i] for i, d in enumerate(DIMS) if i >= 2 and limits[i] != UNLIMITED},
        spent_usd=from_nano(spent[0]),
        spent_requests=spent[1],
        spent_tokens={d: spent[i] for i, d in enumerate(DIMS) if i >= 2},
        reserved_usd=from_nano(reserved[0]),
        reserved_requests=reserved[1],
        reserved_tokens={d: reserved[i] for i, d in enumerate(DIMS) if i >= 2},
        percent=percent,
        source=source,
    )
