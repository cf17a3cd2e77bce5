"""``tokenfuse cache-report``: what prompt caching saved, and why it did not engage, from the ledger.

Savings come from each row's ``cache_saved_usd`` (the same request priced
uncached, minus what it cost). Causes come from consecutive rows of one
conversation (key, session, model), compared by their ``prefix_fp``
fingerprints with the same :func:`tokenfuse.caching.doctor.diagnose` the live
guard uses; the report shows byte offsets, never prompt text.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from itertools import pairwise
from typing import Any

from tokenfuse.caching.doctor import Cause, TurnPrint, diagnose
from tokenfuse.caching.inject import min_cacheable_tokens
from tokenfuse.config import ConfigError, load_config
from tokenfuse.ledger.schema import StoreURL, connect


@dataclass
class WorkflowSavings:
    workflow: str
    requests: int = 0
    cached_requests: int = 0  # rows that read or wrote the cache
    cache_read: int = 0
    saved_usd: Decimal = Decimal(0)
    cost_usd: Decimal = Decimal(0)


@dataclass
class ConversationFinding:
    key: str
    session: str
    model: str
    turns: int
    cause: str
    count: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    workflows: list[WorkflowSavings]
    conversations: list[ConversationFinding]

    def as_dict(self) -> dict[str, Any]:
        return {
            "workflows": [
                {**w.__dict__, "saved_usd": _plain(w.saved_usd), "cost_usd": _plain(w.cost_usd)} for w in self.workflows
            ],
            "conversations": [c.__dict__ for c in self.conversations],
        }


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


_SELECT = (
    "SELECT ts, key_name, session, model, workflow, cache_read, cache_write, cache_write_1h, cost_usd, "
    "cache_saved_usd, prefix_fp FROM requests WHERE outcome = 'ok'{since} ORDER BY ts, request_id"
)


def build(url: str, since: float | None = None) -> Report:
    """Read the ledger once, in time order."""
    store = StoreURL.parse(url)
    if not store.exists():
        return Report([], [])
    conn = connect(url)
    p = "?" if store.dialect == "sqlite" else "%s"
    try:
        cur = conn.execute(_SELECT.format(since=f" AND ts >= {p}" if since is not None else ""),
                           (since,) if since is not None else ())
        rows = cur.fetchall()
    finally:
        conn.close()
    return report_from_rows(rows)


def report_from_rows(rows: list[tuple[Any, ...]]) -> Report:
    workflows: dict[str, WorkflowSavings] = {}
    convs: dict[tuple[str, str, str], list[tuple[float, int, TurnPrint]]] = {}
    for ts, key, session, model, workflow, read, write, write_1h, cost, saved, fp in rows:
        w = workflows.setdefault(workflow or "(none)", WorkflowSavings(workflow or "(none)"))
        w.requests += 1
        w.cache_read += int(read or 0)
        w.cost_usd += Decimal(str(cost or 0))
        if read or write or write_1h:
            w.cached_requests += 1
        if saved is not None:
            w.saved_usd += Decimal(str(saved))
        turn = TurnPrint.decode(fp) if fp else None
        if turn is not None:
            convs.setdefault((key or "", session or "", model or ""), []).append((float(ts), int(read or 0), turn))
    findings = [f for k, turns in convs.items() if (f := _diagnose(k, turns)) is not None]
    return Report(sorted(workflows.values(), key=lambda w: w.workflow), findings)


def _diagnose(key: tuple[str, str, str], turns: list[tuple[float, int, TurnPrint]]) -> ConversationFinding | None:
    minimum = min_cacheable_tokens(key[2])
    causes: list[Cause] = []
    for (t0, _, prev), (t1, read, cur) in pairwise(turns):
        if cur.messages < prev.messages:
            continue  # a new conversation under the same key and session
        cause = diagnose(prev, cur, read, t1 - t0, minimum)
        if cause is not None:
            causes.append(cause)
    if not causes:
        return None
    kind, count = Counter(c.kind for c in causes).most_common(1)[0]
    example = next(c for c in causes if c.kind == kind)
    return ConversationFinding(key[0], key[1], key[2], len(turns), kind, count, example.message, example.data)


def render(report: Report) -> str:
    lines = ["Prompt caching by workflow (saved: against the same requests uncached; negative: caching cost more)", ""]
    header = ("workflow", "requests", "cached", "cache_read", "saved_usd", "cost_usd")
    table = [header] + [
        (w.workflow, str(w.requests), str(w.cached_requests), f"{w.cache_read:,}", f"${w.saved_usd:,.6f}",
         f"${w.cost_usd:,.6f}")
        for w in report.workflows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines += ["  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in table]
    lines += ["", "Conversations whose cache does not engage:"]
    if not report.conversations:
        lines.append("  none")
    for c in report.conversations:
        who = f"key {c.key}" + (f", session {c.session}" if c.session else "") + f", model {c.model}"
        lines.append(f"  {who}: {c.cause} on {c.count} of {c.turns - 1} turns. {c.message}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="tokenfuse cache-report",
        description="What prompt caching saved per workflow, and why it does not engage where it does not.",
    )
    parser.add_argument("--config", required=True, help="the gateway's YAML config (its `store:` is read)")
    parser.add_argument("--since", help="start: ISO date/datetime (UTC) or a duration back from now, e.g. 24h, 7d")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse cache-report: {exc}", file=sys.stderr)
        return 2
    since = None
    if args.since:
        from tokenfuse.ledger.cli import parse_time

        try:
            since = parse_time(args.since)
        except ValueError as exc:
            print(f"tokenfuse cache-report: {exc}", file=sys.stderr)
            return 2
    report = build(cfg.store, since)
    print(json.dumps(report.as_dict(), indent=2) if args.json else render(report))
    return 0
