"""One ledger row: what one request was, who sent it and what it cost."""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

from tokenfuse.ledger.schema import COLUMN_NAMES

# Outcomes the gateway answered itself without admitting the request upstream.
# They are counted apart from `requests` in usage totals.
REFUSED_OUTCOMES: frozenset[str] = frozenset({"refused", "killed", "unauthorized"})


@dataclass(slots=True)
class LedgerRow:
    ts: float
    request_id: str
    key_name: str | None
    principal: str | None
    workflow: str | None
    session: str | None
    protocol: str | None
    route: str | None
    model: str | None
    upstream: str | None
    status: int | None
    input_uncached: int = 0
    cache_read: int = 0
    cache_write: int = 0
    cache_write_1h: int = 0
    output: int = 0
    cost_usd: Decimal = Decimal(0)
    latency_ms: float | None = None
    overhead_ms: float | None = None
    estimated: bool = False
    outcome: str = "ok"
    reason: str | None = None
    team: str | None = None
    tags: str | None = None  # sorted, comma-joined
    cache_saved_usd: Decimal | None = None  # vs the same request uncached; negative: caching cost more
    prefix_fp: str | None = None  # tokenfuse.caching.doctor.TurnPrint.encode(): hashes, never text
    requested_model: str | None = None  # canonical model asked for, when routing served `model` instead

    def as_tuple(self, dialect: str) -> tuple[Any, ...]:
        """Values in column order, typed for the store: SQLite keeps money as exact
        decimal text and booleans as 0/1; PostgreSQL takes Decimal and bool."""
        sqlite = dialect == "sqlite"
        return (
            self.ts,
            self.request_id,
            self.key_name,
            self.principal,
            self.workflow,
            self.session,
            self.protocol,
            self.route,
            self.model,
            self.upstream,
            self.status,
            self.input_uncached,
            self.cache_read,
            self.cache_write,
            self.cache_write_1h,
            self.output,
            format_cost(self.cost_usd) if sqlite else self.cost_usd,
            self.latency_ms,
            self.overhead_ms,
            int(self.estimated) if sqlite else self.estimated,
            self.outcome,
            self.reason,
            self.team,
            self.tags,
            None if self.cache_saved_usd is None else format_cost(self.cache_saved_usd) if sqlite
            else self.cache_saved_usd,
            self.prefix_fp,
            self.requested_model,
        )

    @classmethod
    def from_tuple(cls, values: tuple[Any, ...] | list[Any]) -> LedgerRow:
        """Inverse of :meth:`as_tuple` for either dialect (a row read back from the store)."""
        v = list(values)
        v[_COST] = Decimal(str(v[_COST]))
        v[_ESTIMATED] = bool(v[_ESTIMATED])
        if v[_SAVED] is not None:
            v[_SAVED] = Decimal(str(v[_SAVED]))
        return cls(*v)


def format_cost(value: Decimal) -> str:
    """Fixed-point text, never exponent notation (``7.5E-8`` would still parse,
    but other readers of the table, e.g. billing SQL, should not have to)."""
    return format(value, "f")


_FIELDS = tuple(f.name for f in fields(LedgerRow))
if _FIELDS != COLUMN_NAMES:  # pragma: no cover - a schema edit without a record edit
    raise ImportError(f"LedgerRow fields {_FIELDS} do not match the ledger columns {COLUMN_NAMES}")
_COST = _FIELDS.index("cost_usd")
_ESTIMATED = _FIELDS.index("estimated")
_SAVED = _FIELDS.index("cache_saved_usd")
