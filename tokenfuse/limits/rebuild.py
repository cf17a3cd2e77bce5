"""Counters for open windows, rebuilt from the ledger so a restart never resets a budget.

One aggregate query covers every budget: billed rows since the earliest open
window start, grouped by the fields budgets match on and by "era" (the span
between consecutive window or bucket starts), so each group lies wholly inside
or outside each budget's window. Matching, including model globs, then runs
in Python over the groups, which are few compared with the rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from tokenfuse.ledger import schema
from tokenfuse.limits.budgets import Budget
from tokenfuse.limits.counters import NDIMS, UNLIMITED, Entry, Seed, Vec, to_nano

# A session is rebuilt from rows at most this old; older activity would have
# expired any realistic idle timeout.
SESSION_HORIZON_S = 7 * 86400
_MATCH_COLUMNS = ("key_name", "principal", "workflow", "session", "model", "protocol", "team", "tags")
_TOKEN_SUMS = "SUM(input_uncached), SUM(cache_read), SUM(cache_write), SUM(cache_write_1h), SUM(output)"


class _NanoSum:
    """SQLite aggregate: sum of per-row costs in nano-dollars, each rounded up.

    The ledger stores SQLite costs as decimal TEXT; SUM() would go through a
    double, so the sum is done exactly here, row by row as settle does it.
    """

    def __init__(self) -> None:
        self.total = 0

    def step(self, value: Any) -> None:
        if value is None:
            return
        try:
            self.total += to_nano(Decimal(str(value)))
        except InvalidOperation:
            return

    def finalize(self) -> str:
        return str(self.total)


def _billed(dialect: str) -> str:
    # A row was billed (and settled, not released) if it succeeded or used
    # anything; refused and killed rows never reached the provider. An
    # 'incomplete' row (recovered from the admission journal) was forwarded and
    # is charged at its bound, even a bound of zero: it still counts a request.
    cost = "CAST(cost_usd AS REAL) > 0" if dialect == "sqlite" else "cost_usd > 0"
    return (
        "(outcome IN ('ok', 'incomplete') OR (outcome NOT IN ('refused', 'killed') AND "
        f"(input_uncached + cache_read + cache_write + cache_write_1h + output > 0 OR {cost})))"
    )


def _nano(dialect: str) -> str:
    return "tf_nano_sum(cost_usd)" if dialect == "sqlite" else "SUM(CEIL(cost_usd * 1000000000))"


def _vector(count: Any, sums: Sequence[Any], nano: Any) -> Vec:
    iu, cr, cw, cw1h, out = (int(x or 0) for x in sums)
    return (int(Decimal(str(nano or 0))), int(count), iu, cr, cw + cw1h, out, iu + cr + cw + cw1h + out)


def _add(acc: dict[int, list[int]], idx: int, vec: Vec) -> None:
    cur = acc.setdefault(idx, [0] * NDIMS)
    for d in range(NDIMS):
        cur[d] += vec[d]


def _open(store: str) -> tuple[Any, str]:
    conn = schema.connect(store)
    dialect = schema.StoreURL.parse(store).dialect
    if dialect == "sqlite":
        conn.create_aggregate("tf_nano_sum", 1, _NanoSum)
    return conn, dialect


def budget_seeds(conn: Any, dialect: str, budgets: Sequence[Budget], now: float) -> list[Seed]:
    if not budgets:
        return []
    p = schema.placeholder(dialect)
    starts: list[float | None] = []
    bounds: set[float] = set()
    for b in budgets:
        if b.rolling is not None:
            step = b.bucket_seconds()
            first = b.rolling_start(now)
            starts.append(first)
            bounds.update(first + i * step for i in range(math.ceil(b.rolling / step) + 1))
        else:
            start, _ = b.window(now)
            starts.append(start)
            if start is not None:
                bounds.add(start)
    edges = sorted(bounds)
    lower = None if any(s is None for s in starts) else edges[0]
    case = " ".join(f"WHEN ts >= {p} THEN {i}" for i in reversed(range(len(edges))))
    era = f"CASE {case} ELSE -1 END" if edges else "-1"
    session = "session" if any(f == "session" for b in budgets for f, _ in b.match) else "NULL"
    where = _billed(dialect) + (f" AND ts >= {p}" if lower is not None else "")
    sql = (
        f"SELECT key_name, principal, workflow, {session}, model, protocol, {era}, COUNT(*), "
        f"{_TOKEN_SUMS}, {_nano(dialect)}, team, tags FROM requests WHERE {where} "
        "GROUP BY 1, 2, 3, 4, 5, 6, 7, 15, 16"
    )
    params: list[Any] = list(reversed(edges))
    if lower is not None:
        params.append(lower)
    cur = conn.execute(sql, params)
    rows = cur.fetchall()

    acc: list[dict[int, list[int]]] = [{} for _ in budgets]
    for row in rows:
        fields = dict(
            zip(("key", "principal", "workflow", "session", "model", "protocol"), row[:6], strict=True)
        )
        fields["team"], fields["tags"] = row[14], row[15]
        era_i = int(row[6])
        era_start = edges[era_i] if era_i >= 0 else -math.inf
        vec = _vector(row[7], row[8:13], row[13])
        for i, b in enumerate(budgets):
            start = starts[i]
            if start is not None and era_start < start:
                continue
            if not b.matches_row(fields):
                continue
            idx = math.floor(era_start / b.bucket_seconds()) if b.rolling is not None else 0
            _add(acc[i], idx, vec)
    seeds = []
    for b, buckets in zip(budgets, acc, strict=True):
        seeds.append(Seed(b.entry(now), {k: tuple(v) for k, v in buckets.items()}))
    return seeds


def session_seeds(conn: Any, dialect: str, idle_s: float, now: float) -> list[Seed]:
    p = schema.placeholder(dialect)
    sql = (
        f"SELECT session, MAX(ts), COUNT(*), {_TOKEN_SUMS}, {_nano(dialect)} FROM requests "
        f"WHERE session IS NOT NULL AND ts >= {p} AND {_billed(dialect)} "
        f"GROUP BY session HAVING MAX(ts) >= {p}"
    )
    rows = conn.execute(sql, [now - max(idle_s, SESSION_HORIZON_S), now - idle_s]).fetchall()
    out = []
    for row in rows:
        entry = Entry(f"s:{row[0]}", (UNLIMITED,) * NDIMS, idle_s=idle_s, keep_limits=True)
        out.append(Seed(entry, {0: _vector(row[2], row[3:8], row[8])}, touched=float(row[1])))
    return out


def ledger_seeds(
    store: str, budgets: Sequence[Budget], now: float, session_idle_s: float | None
) -> list[Seed]:
    """Everything the counters should hold for windows open at ``now``."""
    conn, dialect = _open(store)
    try:
        seeds = budget_seeds(conn, dialect, budgets, now)
        if session_idle_s:
            seeds += session_seeds(conn, dialect, session_idle_s, now)
        return seeds
    finally:
        conn.close()
