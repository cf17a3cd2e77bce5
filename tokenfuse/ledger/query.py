"""Reading the ledger back: totals by model, and the rows themselves.

Counting rules (docs/ledger.md): ``requests`` counts rows the gateway admitted,
i.e. every outcome except ``refused``, ``killed`` and ``unauthorized``; those
are counted under ``refused``. Token and cost sums cover every row (a refused
row carries zeros), so the per-model costs add up to the total. ``incomplete``
rows (requests in flight when a gateway died, recovered from its admission
journal and charged at their reserved bound) count as requests and are also
counted apart under ``incomplete``, overall and per model (the key appears only
when there are any).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tokenfuse.ledger.journal import INCOMPLETE
from tokenfuse.ledger.record import REFUSED_OUTCOMES, LedgerRow
from tokenfuse.ledger.schema import COLUMN_NAMES, StoreURL, connect, placeholder

NO_MODEL = "(none)"
_REFUSED_SQL = ", ".join(f"'{o}'" for o in sorted(REFUSED_OUTCOMES))


def format_usd(value: Decimal) -> str:
    """Exact decimal text, never rounded: at least six decimal places, and any
    further digits only as far as they are non-zero (1.5 -> "1.500000",
    0.000000075 -> "0.000000075")."""
    if value == 0:
        value = Decimal(0)
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.rstrip('0').ljust(6, '0')}"


@dataclass(frozen=True)
class Filters:
    since: float | None = None
    until: float | None = None
    principal: str | None = None
    workflow: str | None = None
    session: str | None = None
    key: str | None = None
    team: str | None = None

    def where(self, dialect: str) -> tuple[str, tuple[Any, ...]]:
        p = placeholder(dialect)
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append(f"ts >= {p}")
            params.append(self.since)
        if self.until is not None:
            clauses.append(f"ts < {p}")
            params.append(self.until)
        if self.session is not None and "/" not in self.session:
            # Sessions are recorded as principal/id; a bare id matches it under any principal.
            clauses.append(f"(session = {p} OR session LIKE {p} ESCAPE '!')")
            like = self.session.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            params.extend([self.session, f"%/{like}"])
        for column, value in (
            ("principal", self.principal),
            ("workflow", self.workflow),
            ("session", self.session if self.session is not None and "/" in self.session else None),
            ("key_name", self.key),
            ("team", self.team),
        ):
            if value is not None:
                clauses.append(f"{column} = {p}")
                params.append(value)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _open(url: str) -> Any:
    """A connection, or None for an SQLite file that does not exist yet (an empty
    ledger; reading it should not create it)."""
    return connect(url) if StoreURL.parse(url).exists() else None


def usage_totals(
    url: str,
    since: float | None = None,
    until: float | None = None,
    principal: str | None = None,
    workflow: str | None = None,
    session: str | None = None,
    key: str | None = None,
    team: str | None = None,
) -> dict[str, Any]:
    """Ledger totals, overall and by model, for rows with ``since <= ts < until``."""
    filters = Filters(since, until, principal, workflow, session, key, team)
    dialect = StoreURL.parse(url).dialect
    where, params = filters.where(dialect)
    models: dict[str, dict[str, Any]] = {}
    costs: dict[str, Decimal] = {}
    refused = 0
    incomplete = 0
    conn = _open(url)
    if conn is not None:
        try:
            pg_cost = ", SUM(cost_usd), SUM(COALESCE(cache_saved_usd, 0))" if dialect == "postgresql" else ""
            cur = conn.execute(
                f"SELECT model, SUM(CASE WHEN outcome IN ({_REFUSED_SQL}) THEN 1 ELSE 0 END), COUNT(*), "
                "SUM(input_uncached), SUM(cache_read), SUM(cache_write + cache_write_1h), SUM(output), "
                f"SUM(CASE WHEN outcome = '{INCOMPLETE}' THEN 1 ELSE 0 END)"
                f"{pg_cost} FROM requests{where} GROUP BY model",
                params,
            )
            for model, n_refused, n_all, inp, c_read, c_write, out, n_incomplete, *cost in cur.fetchall():
                name = NO_MODEL if model is None else str(model)
                refused += int(n_refused)
                incomplete += int(n_incomplete)
                models[name] = {
                    "requests": int(n_all) - int(n_refused),
                    "input_uncached": int(inp),
                    "cache_read": int(c_read),
                    "cache_write": int(c_write),
                    "output": int(out),
                }
                if n_incomplete:
                    models[name]["incomplete"] = int(n_incomplete)
                costs[name] = Decimal(cost[0]) if cost else Decimal(0)
            if dialect == "sqlite":
                # Cost is exact decimal text in SQLite; SUM() would go through a
                # double. Summing distinct values times their count keeps it exact
                # and cheap (most rows share a handful of costs).
                cur = conn.execute(
                    f"SELECT model, cost_usd, COUNT(*) FROM requests{where} GROUP BY model, cost_usd", params
                )
                for model, cost_text, n in cur.fetchall():
                    name = NO_MODEL if model is None else str(model)
                    costs[name] += Decimal(cost_text) * n
        finally:
            conn.close()
    by_model = {}
    for name in sorted(models):
        by_model[name] = {**models[name], "cost_usd": format_usd(costs[name])}
    totals: dict[str, Any] = {
        "requests": sum(m["requests"] for m in models.values()),
        "refused": refused,
        "cost_usd": format_usd(sum(costs.values(), Decimal(0))),
        "by_model": by_model,
    }
    if incomplete:
        # Only present when there is something to flag, so the usual shape is unchanged.
        totals["incomplete"] = incomplete
    return totals


def rows(
    url: str,
    since: float | None = None,
    until: float | None = None,
    principal: str | None = None,
    workflow: str | None = None,
    session: str | None = None,
    key: str | None = None,
) -> list[LedgerRow]:
    """The matching rows in time order."""
    filters = Filters(since, until, principal, workflow, session, key)
    where, params = filters.where(StoreURL.parse(url).dialect)
    conn = _open(url)
    if conn is None:
        return []
    try:
        cur = conn.execute(
            f"SELECT {', '.join(COLUMN_NAMES)} FROM requests{where} ORDER BY ts, request_id", params
        )
        return [LedgerRow.from_tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


# `tokenfuse usage --by`: the ledger column (or expression) each grouping reads.
GROUPINGS: dict[str, dict[str, str]] = {
    "principal": {"sqlite": "principal", "postgresql": "principal"},
    "workflow": {"sqlite": "workflow", "postgresql": "workflow"},
    "key": {"sqlite": "key_name", "postgresql": "key_name"},
    "team": {"sqlite": "team", "postgresql": "team"},
    "model": {"sqlite": "model", "postgresql": "model"},
    "day": {
        "sqlite": "strftime('%Y-%m-%d', ts, 'unixepoch')",
        "postgresql": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    },
}
GROUP_COLUMNS = ("requests", "refused", "input_uncached", "cache_read", "cache_write", "output")


@dataclass
class Group:
    name: str
    requests: int = 0
    refused: int = 0
    input_uncached: int = 0
    cache_read: int = 0
    cache_write: int = 0  # both cache-write durations, as in usage_totals
    output: int = 0
    cost_usd: Decimal = Decimal(0)
    # What prompt caching saved against the same requests uncached (negative: it cost more).
    cache_saved_usd: Decimal = Decimal(0)


def usage_by(url: str, by: str, filters: Filters | None = None) -> list[Group]:
    """Ledger sums grouped by principal, workflow, key, team, model or UTC day; costs are exact.

    Counting follows :func:`usage_totals`: refused rows are counted under
    ``refused``, not ``requests``. Rows without a value group under ``(none)``.
    """
    if by not in GROUPINGS:
        raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUPINGS)}")
    dialect = StoreURL.parse(url).dialect
    expr = GROUPINGS[by][dialect]
    where, params = (filters or Filters()).where(dialect)
    groups: dict[str, Group] = {}
    conn = _open(url)
    if conn is None:
        return []
    try:
        pg_cost = ", SUM(cost_usd), SUM(COALESCE(cache_saved_usd, 0))" if dialect == "postgresql" else ""
        cur = conn.execute(
            f"SELECT {expr}, SUM(CASE WHEN outcome IN ({_REFUSED_SQL}) THEN 1 ELSE 0 END), COUNT(*), "
            "SUM(input_uncached), SUM(cache_read), SUM(cache_write + cache_write_1h), SUM(output)"
            f"{pg_cost} FROM requests{where} GROUP BY 1",
            params,
        )
        for value, n_refused, n_all, inp, c_read, c_write, out, *cost in cur.fetchall():
            name = NO_MODEL if value is None else str(value)
            groups[name] = Group(
                name, int(n_all) - int(n_refused), int(n_refused), int(inp), int(c_read), int(c_write), int(out),
                Decimal(cost[0]) if cost else Decimal(0),
                Decimal(cost[1]) if cost else Decimal(0),
            )
        if dialect == "sqlite":
            # Exact: SQLite holds cost as decimal text (see usage_totals).
            cur = conn.execute(
                f"SELECT {expr}, cost_usd, COUNT(*) FROM requests{where} GROUP BY 1, cost_usd", params
            )
            for value, cost_text, n in cur.fetchall():
                groups[NO_MODEL if value is None else str(value)].cost_usd += Decimal(cost_text) * n
            cur = conn.execute(
                f"SELECT {expr}, cache_saved_usd, COUNT(*) FROM requests{where}"
                f"{' AND' if where else ' WHERE'} cache_saved_usd IS NOT NULL GROUP BY 1, cache_saved_usd",
                params,
            )
            for value, saved_text, n in cur.fetchall():
                groups[NO_MODEL if value is None else str(value)].cache_saved_usd += Decimal(saved_text) * n
    finally:
        conn.close()
    return [groups[k] for k in sorted(groups)]
