"""Budget alerts: thresholds, rate projection, dedupe across replicas, webhooks."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from tests.limits.conftest import wait_until
from tokenfuse.config import AlertsConfig
from tokenfuse.limits.alerts import Alert, AlertManager, window_identity
from tokenfuse.limits.budgets import BudgetStatus

MONTH_START = datetime(2026, 11, 1, tzinfo=UTC)
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC).timestamp()


def status(
    spent: str,
    *,
    name: str = "alice-monthly",
    limit: str | None = "200",
    window: str = "month",
    start: datetime | None = MONTH_START,
    resets: datetime | None = MONTH_END,
    requests: tuple[int, int | None] = (0, None),
    tokens: tuple[dict[str, int], dict[str, int]] = ({}, {}),
) -> BudgetStatus:
    return BudgetStatus(
        name=name,
        window=window,
        window_start=start,
        resets_at=resets,
        limit_usd=None if limit is None else Decimal(limit),
        limit_requests=requests[1],
        limit_tokens=tokens[1],
        spent_usd=Decimal(spent),
        spent_requests=requests[0],
        spent_tokens=tokens[0],
        reserved_usd=Decimal(0),
        reserved_requests=0,
        reserved_tokens={},
        percent=0.0,
        source="config",
    )


def manager(
    url: str, webhooks: list[str] | None = None, redis_url: str | None = None, **kw: Any
) -> AlertManager:
    cfg = AlertsConfig.model_validate({"webhooks": webhooks or [], "rate_check": kw.pop("rate_check", True)})
    return AlertManager(cfg, url, redis_url, **kw)


def budget_alerts(m: AlertManager) -> list[Alert]:
    """The queue, which in these tests holds only budget alerts (no guard notices)."""
    out = [a for a in m.queue if isinstance(a, Alert)]
    assert len(out) == len(m.queue)
    return out


def queued(m: AlertManager) -> list[tuple[str, str]]:
    return [(a.budget, a.label) for a in m.queue]


def test_observe_is_synchronous_and_needs_no_event_loop(sqlite_url: str) -> None:
    # The request path calls observe(); it must not be able to await network I/O.
    assert not inspect.iscoroutinefunction(AlertManager.observe)
    m = manager(sqlite_url, ["http://127.0.0.1:9/dead"])
    m.observe([status("150")], now=NOW)  # no loop running here at all
    assert queued(m) == [("alice-monthly", "0.75")]


def test_each_threshold_is_queued_once_per_window(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_check=False)
    m.observe([status("10")], now=NOW)
    assert queued(m) == []
    m.observe([status("40")], now=NOW)
    m.observe([status("41")], now=NOW)
    m.observe([status("100")], now=NOW)
    m.observe([status("160")], now=NOW)
    m.observe([status("200")], now=NOW)
    assert [label for _, label in queued(m)] == ["0.2", "0.5", "0.75", "1"]
    # A new window starts the thresholds again.
    m.queue.clear()
    m.observe([status("45", start=MONTH_END, resets=MONTH_END + timedelta(days=31))], now=NOW)
    assert [label for _, label in queued(m)] == ["0.2"]


def test_the_fullest_dimension_decides(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_check=False)
    m.observe([status("1", requests=(80, 100), tokens=({"output": 10}, {"output": 1000}))], now=NOW)
    alerts = budget_alerts(m)
    assert [(a.label, a.crossed) for a in alerts] == [("0.75", ("0.2", "0.5", "0.75"))]
    assert {a.metric for a in alerts} == {"requests"}
    assert alerts[-1].spent == "80" and alerts[-1].limit == "100"
    m.queue.clear()
    m.observe([status("0", limit=None, name="tok", tokens=({"output": 600}, {"output": 1000}))], now=NOW)
    assert [(a.metric, a.label) for a in budget_alerts(m)] == [("tokens.output", "0.5")]


def test_rolling_windows_dedupe_per_span_of_their_length() -> None:
    s = status("0", window="rolling 1h", start=None, resets=None)
    key1, ttl, rolling = window_identity(s, 7200.0)
    assert rolling == 3600 and ttl is not None and ttl >= 3600
    assert window_identity(s, 7200.0 + 3599)[0] == key1
    assert window_identity(s, 7200.0 + 3600)[0] != key1
    assert window_identity(status("0", window="total", start=None, resets=None), 1.0)[0] == "total"


def test_rate_alert_when_last_hour_would_exhaust_before_reset(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_min_span_s=300)
    resets = datetime.fromtimestamp(NOW + 5 * 3600, UTC)
    # $1 a minute, $100 budget, $10 spent, 5 hours left: runs out long before the reset.
    for i in range(11):
        m.observe(
            [status(str(1 + i), limit="100", window="day", start=MONTH_START, resets=resets)],
            now=NOW + 60 * i,
        )
    rate = [a for a in budget_alerts(m) if a.kind == "rate"]
    assert len(rate) == 1
    assert rate[0].projected_exhaustion is not None
    assert rate[0].projected_exhaustion < resets
    payload = rate[0].payload()
    assert payload["kind"] == "rate" and payload["threshold"] is None and "run out" in payload["text"]
    for i in range(11, 20):
        m.observe(
            [status(str(1 + i), limit="100", window="day", start=MONTH_START, resets=resets)],
            now=NOW + 60 * i,
        )
    assert len([a for a in budget_alerts(m) if a.kind == "rate"]) == 1


def test_no_rate_alert_when_the_pace_fits(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_min_span_s=300)
    resets = datetime.fromtimestamp(NOW + 3600, UTC)
    for i in range(11):
        # $0.10 a minute with $80 headroom and an hour left.
        m.observe([status(f"{10 + i / 10}", limit="100", window="day", resets=resets)], now=NOW + 60 * i)
    assert [a for a in budget_alerts(m) if a.kind == "rate"] == []


def test_full_queue_drops_the_oldest_with_a_warning(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    m = manager(sqlite_url, queue_size=2, rate_check=False)
    with caplog.at_level(logging.WARNING, "tokenfuse.alerts"):
        m.observe([status("120", name="a"), status("120", name="b"), status("120", name="c")], now=NOW)
        m.observe([status("160", name="c")], now=NOW)
    assert m.dropped == 2
    assert queued(m) == [("c", "0.5"), ("c", "0.75")]
    assert "alert queue full" in caplog.text


class Hooks:
    """A tiny webhook receiver; a slow one holds every request until the test ends."""

    def __init__(self, slow: bool = False) -> None:
        self.received: list[dict[str, Any]] = []
        self.slow = slow
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append({"body": await request.json(), "headers": dict(request.headers)})
        if self.slow:
            await self.release.wait()
        return web.Response(text="ok")

    async def __aenter__(self) -> Hooks:
        app = web.Application()
        app.router.add_post("/hook/{secret}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook/T000-secret"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        self.release.set()
        await self.runner.cleanup()


def test_webhook_gets_slack_compatible_json_and_log_gets_one_line(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Hooks() as hooks:
            cfg = AlertsConfig.model_validate(
                {"webhooks": [{"url": hooks.url, "headers": {"X-Team": "finops"}}], "thresholds": [0.75]}
            )
            m = AlertManager(cfg, sqlite_url)
            await m.start()
            m.observe([status("150.5")], now=NOW)
            assert await wait_until(lambda: len(hooks.received) == 1)
            await m.stop()
        got = hooks.received[0]
        body = got["body"]
        assert got["headers"]["X-Team"] == "finops"
        assert isinstance(body["text"], str) and "alice-monthly" in body["text"] and "75%" in body["text"]
        assert body["budget"] == "alice-monthly"
        assert body["threshold"] == 0.75
        assert body["percent"] == 75.25
        assert body["spent"] == "150.50" and body["limit"] == "200.00" and body["metric"] == "usd"
        assert body["window"] == "month"
        assert body["resets_at"] == "2026-12-01T00:00:00+00:00"
        lines = [r.getMessage() for r in caplog.records if r.name == "tokenfuse.alerts"]
        alert_lines = [json.loads(x) for x in lines if x.startswith("{")]
        assert len(alert_lines) == 1 and alert_lines[0]["event"] == "budget_alert"

    with caplog.at_level(logging.INFO, "tokenfuse.alerts"):
        asyncio.run(main())


def _two_replicas(url: str, redis_url: str | None = None) -> None:
    budget = f"shared-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with Hooks() as hooks:
            a = manager(url, [hooks.url], redis_url, rate_check=False)
            b = manager(url, [hooks.url], redis_url, rate_check=False)
            await a.start()
            await b.start()
            # Both replicas see the same spend cross the same thresholds.
            for spent in ("50", "110", "160", "205"):
                a.observe([status(spent, name=budget)], now=NOW)
                b.observe([status(spent, name=budget)], now=NOW)
            await a.stop()
            await b.stop()
        labels = sorted(h["body"]["threshold"] for h in hooks.received)
        assert labels == [0.2, 0.5, 0.75, 1.0]
        assert len(a.sent) + len(b.sent) == 4

    asyncio.run(main())


def test_two_replicas_sharing_sqlite_fire_each_threshold_once(sqlite_url: str) -> None:
    _two_replicas(sqlite_url)


def test_two_replicas_sharing_postgresql_fire_each_threshold_once(pg_url: str) -> None:
    _two_replicas(pg_url)


def test_two_replicas_sharing_redis_fire_each_threshold_once(sqlite_url: str, redis_url: str) -> None:
    _two_replicas(sqlite_url, redis_url)


def test_dead_and_slow_webhooks_do_not_block_other_work(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with Hooks(slow=True) as slow:
            m = manager(sqlite_url, ["http://127.0.0.1:1/closed-port", slow.url], rate_check=False)
            await m.start()
            m.observe([status("45")], now=NOW)
            # While the slow hook holds the sender, the event loop (i.e. requests) keeps running
            # and later observations still queue.
            assert await wait_until(lambda: len(slow.received) == 1)
            m.observe([status("110")], now=NOW)
            m.observe([status("160")], now=NOW)
            assert [a.label for a in m.queue] == ["0.5", "0.75"]
            await m.stop(drain_timeout_s=0.2)
        assert "closed-port" not in caplog.text  # URL paths may carry secrets
        assert "alert webhook http://127.0.0.1:1/... failed" in caplog.text
        # The alert was still logged even though no webhook took it.
        assert [p["threshold"] for p in m.sent] == [0.2]

    with caplog.at_level(logging.WARNING, "tokenfuse.alerts"):
        asyncio.run(main())


def test_real_limiter_settles_feed_alerts(sqlite_url: str) -> None:
    from tokenfuse.config import Config
    from tokenfuse.limits.bounds import Bound
    from tokenfuse.limits.context import RequestContext
    from tokenfuse.limits.limiter import Limiter
    from tokenfuse.usage import Usage

    async def main() -> None:
        alerts = manager(sqlite_url, rate_check=False)
        config = Config.model_validate(
            {
                "store": sqlite_url,
                "budgets": [
                    {"name": "team-day", "match": {"workflow": "droid"}, "window": "day", "limit": {"usd": 1}}
                ],
            }
        )
        limiter = await Limiter.create(config, on_settle=alerts.observe, rebuild=False)
        ctx = RequestContext("k", "alice", "droid", None, "m", "openai")
        try:
            for cost in ("0.30", "0.30"):
                admission = await limiter.reserve(ctx, Bound(Decimal("0.35"), {}))
                assert admission.ok
                await limiter.settle(admission, Usage(input_uncached=10, output=5), Decimal(cost))
        finally:
            await limiter.close()
        assert [(a.budget, a.label, a.spent) for a in budget_alerts(alerts)] == [
            ("team-day", "0.2", "0.30"),
            ("team-day", "0.5", "0.60"),
        ]

    asyncio.run(main())


def test_session_caps_are_not_alerted(sqlite_url: str) -> None:
    import dataclasses

    m = manager(sqlite_url, rate_check=False)
    s = dataclasses.replace(
        status("199", name="session:agent-1", window="session", start=None, resets=None), source="session"
    )
    m.observe([s], now=NOW)
    assert list(m.queue) == []


# -- what users experience: one message per jump, projections, refusals ---------------------


def refusing(spent: str, reserved: str, in_flight: int, **kw: Any) -> BudgetStatus:
    import dataclasses

    return dataclasses.replace(
        status(spent, **kw), reserved_usd=Decimal(reserved), reserved_requests=in_flight
    )


def test_several_thresholds_crossed_at_once_are_one_message(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_check=False)
    m.observe([status("205")], now=NOW)
    [alert] = budget_alerts(m)
    assert alert.label == "1" and alert.crossed == ("0.2", "0.5", "0.75", "1")
    payload = alert.payload()
    assert payload["threshold"] == 1.0 and payload["thresholds_crossed"] == [0.2, 0.5, 0.75, 1.0]
    assert "reached 100% of its month limit" in payload["text"]
    assert "crossed 20%, 50%, 75%, 100% at once" in payload["text"]
    assert payload["text"].count("reached") == 1
    # Nothing left to cross in this window.
    m.observe([status("250")], now=NOW)
    assert len(m.queue) == 1


def test_threshold_alert_projects_exhaustion_from_the_burn_rate(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_check=False, rate_min_span_s=300)
    # $2 a minute from $50 crosses 50% at minute 25 with $100 left: 50 minutes to go.
    for i in range(26):
        m.observe([status(str(50 + 2 * i))], now=NOW + 60 * i)
    crossings = [a for a in budget_alerts(m) if a.label == "0.5"]
    assert len(crossings) == 1
    alert = crossings[0]
    assert alert.rate_per_hour == "120.00"
    assert alert.projected_exhaustion == datetime.fromtimestamp(NOW + 60 * 25 + 50 * 60, UTC)
    text = alert.payload()["text"]
    assert "at the last hour's rate ($120.00 an hour) it runs out around 2026-11-20T13:15:00+00:00" in text
    # The first threshold came with no history: no projection rather than a guess.
    first = next(a for a in budget_alerts(m) if a.label == "0.2")
    assert first.projected_exhaustion is None and "runs out" not in first.payload()["text"]


def test_first_refusal_alerts_once_per_window_with_what_is_held(sqlite_url: str) -> None:
    m = manager(sqlite_url, rate_check=False)
    assert not m.refusal_seen("alice-monthly", Decimal("0.40"), now=NOW)
    m.refused(refusing("190.25", "8.5", 3), Decimal("0.40"), now=NOW)
    # Later refusals in the same window only count; the largest one is reported.
    assert m.refusal_seen("alice-monthly", Decimal("1.75"), now=NOW + 1)
    assert m.refusal_seen("alice-monthly", Decimal("0.10"), now=NOW + 2)
    [alert] = budget_alerts(m)
    assert alert.kind == "refusing"
    payload = alert.payload()
    assert payload["text"] == (
        "tokenfuse: budget alice-monthly is now refusing requests: $190.25 of $200.00 spent, "
        "$8.50 held by 3 in-flight requests; largest refused request needed $1.75; "
        "resets 2026-12-01T00:00:00+00:00"
    )
    assert payload["refused_requests"] == 3 and payload["largest_refused_usd"] == "1.75"
    assert payload["in_flight"] == 3 and payload["reserved"] == "8.50" and payload["threshold"] is None
    # A new window refuses anew: one more alert.
    after = MONTH_END.timestamp() + 10
    assert not m.refusal_seen("alice-monthly", Decimal("0.40"), now=after)
    nxt = refusing("0.5", "0", 0, start=MONTH_END, resets=MONTH_END + timedelta(days=31))
    m.refused(nxt, Decimal("250"), now=after)
    assert [a.kind for a in budget_alerts(m)] == ["refusing", "refusing"]
    assert "held by 0 in-flight requests; largest refused request needed $250.00" in m.queue[-1].payload()["text"]


def test_session_cap_refusals_are_not_alerted(sqlite_url: str) -> None:
    import dataclasses

    m = manager(sqlite_url, rate_check=False)
    s = dataclasses.replace(refusing("1", "0", 0, name="session:a/1", window="session"), source="session")
    m.refused(s, Decimal("2"), now=NOW)
    assert list(m.queue) == []


def test_two_replicas_send_one_refusing_alert_and_one_message_per_jump(sqlite_url: str) -> None:
    budget = f"shared-{uuid.uuid4().hex[:8]}"

    async def main() -> None:
        async with Hooks() as hooks:
            a = manager(sqlite_url, [hooks.url], rate_check=False)
            b = manager(sqlite_url, [hooks.url], rate_check=False)
            await a.start()
            await b.start()
            a.observe([status("205", name=budget)], now=NOW)  # one message for all four
            assert await wait_until(lambda: len(hooks.received) == 1)
            b.observe([status("50", name=budget)], now=NOW)  # b's 20% was already claimed by a
            for m in (a, b):
                m.refused(refusing("199", "1", 1, name=budget), Decimal("2"), now=NOW)
            await a.stop()
            await b.stop()
        kinds = sorted((h["body"]["kind"], h["body"]["threshold"]) for h in hooks.received)
        assert kinds == [("refusing", None), ("threshold", 1.0)]

    asyncio.run(main())


def test_real_limiter_refusal_feeds_the_refusing_alert(sqlite_url: str) -> None:
    """The wiring the gateway uses: on a budget refusal, refusal_seen() first, and
    only when it says no, one status read and refused()."""
    from tokenfuse.config import Config
    from tokenfuse.limits.bounds import Bound
    from tokenfuse.limits.context import RequestContext
    from tokenfuse.limits.limiter import Limiter

    async def main() -> None:
        alerts = manager(sqlite_url, rate_check=False)
        config = Config.model_validate(
            {
                "store": sqlite_url,
                "admission_wait_ms": 0,
                "budgets": [
                    {"name": "team-day", "match": {"workflow": "droid"}, "window": "day", "limit": {"usd": 1}}
                ],
            }
        )
        limiter = await Limiter.create(config, on_settle=alerts.observe, rebuild=False)
        ctx = RequestContext("k", "alice", "droid", None, "m", "openai")
        reads = 0
        try:
            held = await limiter.reserve(ctx, Bound(Decimal("0.6"), {}))
            assert held.ok
            for need in ("0.5", "0.9", "0.7"):
                admission = await limiter.reserve(ctx, Bound(Decimal(need), {}))
                assert not admission.ok and admission.refusal is not None
                name = admission.refusal.budget
                if not alerts.refusal_seen(name, Decimal(need)):
                    reads += 1
                    st = next(s for s in await limiter.snapshot() if s.name == name)
                    alerts.refused(st, Decimal(need))
            await limiter.release(held)
        finally:
            await limiter.close()
        assert reads == 1
        [alert] = budget_alerts(alerts)
        assert alert.payload()["text"].startswith(
            "tokenfuse: budget team-day is now refusing requests: $0.00 of $1.00 spent, "
            "$0.60 held by 1 in-flight request; largest refused request needed $0.90; resets "
        )

    asyncio.run(main())
