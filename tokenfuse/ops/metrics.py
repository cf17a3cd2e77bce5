"""Request metrics: what every ledger row adds to the Prometheus counters.

The gateway calls :meth:`RequestMetrics.observe` once per request with the row
it writes to the ledger, so the counters and the ledger can never disagree.
``observe`` only adds numbers into plain dicts (a few microseconds, no lock,
no label validation); the Prometheus families are built from those dicts at
scrape time by :meth:`RequestMetrics.collect`. Both run on the event loop
thread, so there is nothing to synchronise.

Cardinality is bounded: labels come from the config (key, principal,
workflow), from fixed vocabularies (protocol, route, outcome, token class,
refusal reason) or from the model, whose distinct values are capped at
``MAX_MODELS`` (later ones are counted under ``(other)``). Sessions are never
a label.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from decimal import Decimal

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from tokenfuse.ledger.record import LedgerRow
from tokenfuse.usage import TOKEN_CLASSES

MAX_MODELS = 200
OTHER_MODEL = "(other)"
# Seconds. Total and upstream latency span a cached embedding to a long agent
# turn; the gateway's own overhead is sub-millisecond when healthy.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)
OVERHEAD_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)
# USD per request.
COST_BUCKETS: tuple[float, ...] = (
    0.00001, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
)
# Outcomes the gateway answered itself, never forwarding (docs/operations.md).
REFUSAL_OUTCOMES = frozenset({"refused", "killed", "unauthorized", "not_found", "bad_request"})
REQUEST_LABELS = ("protocol", "route", "model", "key", "principal", "workflow", "outcome")
SPEND_LABELS = REQUEST_LABELS[:-1]

_SeriesKey = tuple[str, str, str, str, str, str, str]


class _Series:
    __slots__ = ("cache_read", "cache_write", "cache_write_1h", "cost", "input_uncached", "output", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.input_uncached = 0
        self.cache_read = 0
        self.cache_write = 0
        self.cache_write_1h = 0
        self.output = 0
        self.cost = Decimal(0)


class _Histogram:
    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.total = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


def refusal_reason(outcome: str, reason: str | None) -> str:
    """A bounded name for why the gateway refused (the row's reason is free text)."""
    if outcome != "refused":
        return {"killed": "kill_switch"}.get(outcome, outcome)
    text = reason or ""
    for prefix, name in (
        ("budget ", "budget"),
        ("session_cap", "session_cap"),
        ("counters_unavailable", "counters_unavailable"),
        ("guard ", "guard"),
        ("unbounded:", "unbounded_features"),
        ("priced options:", "priced_options"),
        ("no upstream", "no_upstream"),
    ):
        if text.startswith(prefix):
            return name
    if "has no known price" in text:
        return "unpriced_model"
    return "other"


class RequestMetrics:
    def __init__(self, max_models: int = MAX_MODELS) -> None:
        self._series: dict[_SeriesKey, _Series] = {}
        self._refusals: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self._upstream: dict[tuple[str, str], _Histogram] = {}
        self._overhead: dict[tuple[str, str], _Histogram] = {}
        self._cost: dict[tuple[str, str], _Histogram] = {}
        self._models: set[str] = set()
        self._max_models = max_models

    # -- the hot path: once per request ---------------------------------------

    def observe(self, row: LedgerRow) -> None:
        model = row.model or ""
        if model not in self._models:
            model = self._admit_model(model)
        protocol = row.protocol or ""
        route = row.route or ""
        key: _SeriesKey = (
            protocol, route, model, row.key_name or "", row.principal or "", row.workflow or "", row.outcome
        )
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        s.requests += 1
        if row.input_uncached or row.output or row.cache_read or row.cache_write or row.cache_write_1h:
            s.input_uncached += row.input_uncached
            s.cache_read += row.cache_read
            s.cache_write += row.cache_write
            s.cache_write_1h += row.cache_write_1h
            s.output += row.output
        if row.cost_usd:
            s.cost += row.cost_usd
        pr = (protocol, route)
        if row.outcome in REFUSAL_OUTCOMES:
            rk = (protocol, row.outcome, refusal_reason(row.outcome, row.reason))
            self._refusals[rk] = self._refusals.get(rk, 0) + 1
        elif row.upstream is not None:
            self._hist(self._cost, pr, COST_BUCKETS).add(float(row.cost_usd))
        latency = row.latency_ms
        if latency is not None:
            self._hist(self._latency, pr, LATENCY_BUCKETS).add(latency / 1000)
            overhead = row.overhead_ms
            if overhead is not None:
                self._hist(self._overhead, pr, OVERHEAD_BUCKETS).add(overhead / 1000)
                if row.upstream is not None:
                    self._hist(self._upstream, pr, LATENCY_BUCKETS).add((latency - overhead) / 1000)

    def _admit_model(self, model: str) -> str:
        # A client may send any model name (up to the gateway's limit); past the
        # cap new names share one label so the scrape stays small.
        if len(self._models) >= self._max_models:
            return OTHER_MODEL
        self._models.add(model)
        return model

    @staticmethod
    def _hist(table: dict[tuple[str, str], _Histogram], key: tuple[str, str], bounds: tuple[float, ...]) -> _Histogram:
        h = table.get(key)
        if h is None:
            h = table[key] = _Histogram(bounds)
        return h

    # -- reading --------------------------------------------------------------

    def cost_total(self) -> Decimal:
        """The exact sum of every observed row's cost (the ledger's figure for this process)."""
        return sum((s.cost for s in self._series.values()), Decimal(0))

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tokenfuse_requests", "Requests by protocol, route, model, key, principal, workflow and outcome.",
            labels=REQUEST_LABELS,
        )
        tokens = CounterMetricFamily(
            "tokenfuse_tokens", "Tokens metered, by token class.", labels=(*SPEND_LABELS, "class"),
        )
        cost = CounterMetricFamily(
            "tokenfuse_cost_usd", "Spend in USD as written to the ledger (same rows, same amounts).",
            labels=SPEND_LABELS,
        )
        spend: dict[tuple[str, ...], _Series] = {}
        for key, s in self._series.items():
            requests.add_metric(key, s.requests)
            agg = spend.get(key[:-1])
            if agg is None:
                agg = spend[key[:-1]] = _Series()
            for c in TOKEN_CLASSES:
                setattr(agg, c, getattr(agg, c) + getattr(s, c))
            agg.cost += s.cost
        for labels, agg in spend.items():
            cost.add_metric(labels, float(agg.cost))
            for c in TOKEN_CLASSES:
                n = getattr(agg, c)
                if n:
                    tokens.add_metric((*labels, c), n)
        yield requests
        yield tokens
        yield cost
        refusals = CounterMetricFamily(
            "tokenfuse_refusals", "Requests the gateway answered itself without forwarding, by reason.",
            labels=("protocol", "outcome", "reason"),
        )
        for rkey, n in self._refusals.items():
            refusals.add_metric(rkey, n)
        yield refusals
        for name, doc, table in (
            ("tokenfuse_request_duration_seconds", "Time from request received to response finished.",
             self._latency),
            ("tokenfuse_upstream_duration_seconds", "Time spent waiting on and relaying from the upstream.",
             self._upstream),
            ("tokenfuse_overhead_duration_seconds", "The gateway's own time: total minus upstream.",
             self._overhead),
            ("tokenfuse_request_cost_usd", "Cost of each forwarded request in USD.", self._cost),
        ):
            fam = HistogramMetricFamily(name, doc, labels=("protocol", "route"))
            for hkey, h in table.items():
                fam.add_metric(list(hkey), h.buckets(), h.total)
            yield fam
