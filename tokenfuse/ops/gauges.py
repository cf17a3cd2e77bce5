"""Control-plane gauges, read at scrape time: budgets, kill switches, the ledger queue.

Nothing here runs per request. The budget figures come from the limiter's
snapshot (one counter read per scrape), so a Grafana burn-down shows what the
gateway enforces, reservations included.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from tokenfuse import __version__

BUDGET_LABELS = ("budget", "window", "source")
KILL_SCOPES = ("all", "key", "principal", "workflow", "session", "model")


@dataclass(slots=True)
class ControlState:
    """What one scrape read from the running gateway."""

    budgets: list[Any] | None = None  # BudgetStatus; None when the counters could not be read
    counters_error: str | None = None
    kill_scopes: list[str] = field(default_factory=list)
    ledger_pending: int = 0
    ledger_written: int = 0
    ledger_errors: int = 0
    ledger_rejected: int = 0


def control_metrics(state: ControlState) -> Iterator[Metric]:
    info = InfoMetricFamily("tokenfuse_build", "tokenfuse version.")
    info.add_metric([], {"version": __version__})
    yield info
    up = GaugeMetricFamily("tokenfuse_counters_up", "1 when the budget counters answered this scrape.")
    up.add_metric([], 0.0 if state.counters_error is not None else 1.0)
    yield up
    yield from _budget_metrics(state.budgets or [])
    kills = GaugeMetricFamily("tokenfuse_kill_switches_active", "Kill switches in force, by scope.", labels=["scope"])
    by_scope = Counter(state.kill_scopes)
    for scope in sorted({*KILL_SCOPES, *by_scope}):
        kills.add_metric([scope], by_scope.get(scope, 0))
    yield kills
    queue = GaugeMetricFamily("tokenfuse_ledger_queue_depth", "Ledger rows accepted but not yet committed.")
    queue.add_metric([], state.ledger_pending)
    yield queue
    written = CounterMetricFamily("tokenfuse_ledger_rows_written", "Ledger rows committed to the store.")
    written.add_metric([], state.ledger_written)
    yield written
    errors = CounterMetricFamily("tokenfuse_ledger_write_errors", "Failed ledger commits (rows kept and retried).")
    errors.add_metric([], state.ledger_errors)
    yield errors
    rejected = CounterMetricFamily(
        "tokenfuse_ledger_rows_rejected", "Ledger rows the store refused, set aside in a file."
    )
    rejected.add_metric([], state.ledger_rejected)
    yield rejected


def _budget_metrics(budgets: Iterable[Any]) -> Iterator[Metric]:
    spent = GaugeMetricFamily("tokenfuse_budget_spent_usd", "Settled spend in the budget's current window.",
                              labels=BUDGET_LABELS)
    reserved = GaugeMetricFamily("tokenfuse_budget_reserved_usd", "Spend reserved by requests in flight.",
                                 labels=BUDGET_LABELS)
    limit = GaugeMetricFamily("tokenfuse_budget_limit_usd", "The budget's USD limit (absent when it has none).",
                              labels=BUDGET_LABELS)
    spent_req = GaugeMetricFamily("tokenfuse_budget_spent_requests", "Requests counted in the current window.",
                                  labels=BUDGET_LABELS)
    limit_req = GaugeMetricFamily("tokenfuse_budget_limit_requests", "The budget's request limit.",
                                  labels=BUDGET_LABELS)
    used = GaugeMetricFamily("tokenfuse_budget_used_ratio", "The most-used limited dimension, 0..1 (can exceed 1).",
                             labels=BUDGET_LABELS)
    for b in budgets:
        if b.source == "session":  # one per session: unbounded, and sessions are never labels
            continue
        labels = [b.name, b.window, b.source]
        spent.add_metric(labels, float(b.spent_usd))
        reserved.add_metric(labels, float(b.reserved_usd))
        if b.limit_usd is not None:
            limit.add_metric(labels, float(b.limit_usd))
        spent_req.add_metric(labels, b.spent_requests)
        if b.limit_requests is not None:
            limit_req.add_metric(labels, b.limit_requests)
        used.add_metric(labels, b.percent / 100)
    yield from (spent, reserved, limit, spent_req, limit_req, used)
