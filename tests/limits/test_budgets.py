"""Budget windows (calendar UTC, rolling, total) and matching."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from tests.limits.conftest import ctx
from tokenfuse.config import BudgetConfig
from tokenfuse.limits.budgets import Budget, BudgetIndex, calendar_window, status_from
from tokenfuse.limits.counters import UNLIMITED


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def budget(**kw: object) -> Budget:
    spec: dict[str, object] = {"name": "b", "limit": {"usd": 10}, **kw}
    return Budget(BudgetConfig.model_validate(spec))


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (ts(2026, 1, 31, 23, 59, 59), ts(2026, 1, 1), ts(2026, 2, 1)),
        (ts(2026, 2, 1), ts(2026, 2, 1), ts(2026, 3, 1)),
        (ts(2026, 12, 15, 12), ts(2026, 12, 1), ts(2027, 1, 1)),
        (ts(2028, 2, 29, 23), ts(2028, 2, 1), ts(2028, 3, 1)),
        (ts(2026, 4, 30, 23, 59, 59) + 0.999, ts(2026, 4, 1), ts(2026, 5, 1)),
    ],
)
def test_month_windows_are_calendar_months_in_utc(now: float, start: float, end: float) -> None:
    assert calendar_window("month", now) == (start, end)


@pytest.mark.parametrize(
    "now",
    [ts(2026, 11, 23), ts(2026, 11, 25, 13), ts(2026, 11, 29, 23, 59, 59)],
)
def test_weeks_start_on_monday_utc(now: float) -> None:
    # 2026-11-23 is a Monday.
    assert calendar_window("week", now) == (ts(2026, 11, 23), ts(2026, 11, 30))


def test_week_crossing_a_year_boundary() -> None:
    # 2027-01-01 is a Friday; its week began on Monday 2026-12-28.
    assert calendar_window("week", ts(2027, 1, 1, 8)) == (ts(2026, 12, 28), ts(2027, 1, 4))


def test_minute_hour_day() -> None:
    now = ts(2026, 11, 23, 13, 45, 30) + 0.25
    assert calendar_window("minute", now) == (ts(2026, 11, 23, 13, 45), ts(2026, 11, 23, 13, 46))
    assert calendar_window("hour", now) == (ts(2026, 11, 23, 13), ts(2026, 11, 23, 14))
    assert calendar_window("day", now) == (ts(2026, 11, 23), ts(2026, 11, 24))


def test_window_keys_embed_the_window_start_and_change_at_the_boundary() -> None:
    b = budget(window="day")
    before = b.entry(ts(2026, 11, 23, 23, 59, 59))
    after = b.entry(ts(2026, 11, 24))
    assert before.key.endswith(f":{int(ts(2026, 11, 23))}")
    assert after.key.endswith(f":{int(ts(2026, 11, 24))}")
    assert before.expire_at is not None and before.expire_at > ts(2026, 11, 24)


def test_total_never_resets() -> None:
    b = budget(window="total")
    assert b.window(ts(2026, 1, 1)) == (None, None)
    assert b.entry(ts(2026, 1, 1)).key == b.entry(ts(2030, 1, 1)).key
    assert b.entry(ts(2030, 1, 1)).expire_at is None


def test_rolling_window_covers_its_whole_length_in_buckets() -> None:
    b = budget(window={"rolling": "1h"})
    now = ts(2026, 11, 23, 13, 30)
    assert b.window(now) == (now - 3600, None)
    assert b.window_label == "rolling 1h"
    e = b.entry(now)
    assert e.rolling_bucket_s * e.rolling_buckets >= 3600
    assert b.rolling_start(now) <= now - 3600


def test_rolling_written_as_a_string() -> None:
    assert budget(window="rolling: 30d").window_label == "rolling 30d"


def test_model_globs_and_exact_fields() -> None:
    b = budget(match={"model": "*claude-opus*", "workflow": "droid"})
    assert b.matches(ctx(model="us.anthropic.claude-opus-4-1-v1:0"))
    assert b.matches(ctx(model="claude-opus-4-1"))
    assert not b.matches(ctx(model="claude-sonnet-4"))
    assert b.matches(ctx(model="CLAUDE-OPUS"))  # compared as canonical (lower-case) ids
    assert not b.matches(ctx(model="claude-opus-4-1", workflow="batch"))


OPUS_SPELLINGS = [
    "claude-opus-4-6",
    "CLAUDE-OPUS-4-6",
    "claude-opus-4-6 ",
    "claude-opus-4-6@20260101",
    "us.anthropic.claude-opus-4-6-v1",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-6-v1",
    "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-opus-4-6-v1",
]


@pytest.mark.parametrize(
    "configured", ["claude-opus-4-6", "Claude-Opus-4-6", "us.anthropic.claude-opus-4-6-v1:0"]
)
def test_a_per_model_budget_counts_every_spelling_of_the_model(configured: str) -> None:
    b = budget(match={"model": configured})
    for sent in OPUS_SPELLINGS:
        assert b.matches(ctx(model=sent)), sent
        assert b.matches_row({"model": sent}), sent
    assert not b.matches(ctx(model="claude-opus-4-5"))
    assert not b.matches_row({"model": "claude-opus-4-5"})


def test_a_budget_on_an_alias_counts_the_aliased_model() -> None:
    b = budget(match={"model": "claude-3-5-sonnet-latest"})
    assert b.matches(ctx(model="claude-3-5-sonnet-20241022"))
    assert b.matches(ctx(model="anthropic.claude-3-5-sonnet-20240620-v1:0"))


def test_unpriced_model_budgets_match_normalised_spellings() -> None:
    b = budget(match={"model": "test-model"})
    for sent in ("test-model", "TEST-MODEL", " test-model ", "test-model-2024-01-01"):
        assert b.matches(ctx(model=sent)), sent
    assert not b.matches(ctx(model="test-model-2"))


def test_index_does_not_cache_oversized_model_names() -> None:
    index = BudgetIndex([budget(match={"model": "*"})])
    for i in range(50):
        assert index.match(ctx(model=f"{i}" + "x" * 100_000))
    assert len(index._cache) == 0


def test_key_and_session_match() -> None:
    assert budget(match={"key": "alice-droid"}).matches(ctx())
    assert not budget(match={"key": "bob"}).matches(ctx())
    s = budget(match={"session": "run-7"})
    assert s.matches(ctx(session="run-7"))
    assert not s.matches(ctx(session=None))


def test_index_caches_per_identity_and_checks_sessions_per_request() -> None:
    by_principal = Budget(
        BudgetConfig.model_validate({"name": "p", "match": {"principal": "alice"}, "limit": {"requests": 1}})
    )
    by_glob = Budget(
        BudgetConfig.model_validate({"name": "g", "match": {"model": "gpt-4o*"}, "limit": {"requests": 1}})
    )
    by_session = Budget(
        BudgetConfig.model_validate({"name": "s", "match": {"session": "x"}, "limit": {"requests": 1}})
    )
    idx = BudgetIndex([by_principal, by_glob, by_session])
    assert [b.name for b in idx.match(ctx(model="gpt-4o-mini"))] == ["p", "g"]
    assert [b.name for b in idx.match(ctx(model="gpt-4o-mini", session="x"))] == ["p", "g", "s"]
    assert [b.name for b in idx.match(ctx(model="gpt-4", principal="bob"))] == []
    assert [b.name for b in idx.match(ctx(model="gpt-4o-mini", session="y"))] == ["p", "g"]


def test_raising_a_limit_keeps_the_counter_but_changing_the_match_does_not() -> None:
    a = budget(match={"principal": "alice"}, limit={"usd": 10})
    raised = budget(match={"principal": "alice"}, limit={"usd": 20})
    other = budget(match={"principal": "bob"}, limit={"usd": 10})
    assert a.ident == raised.ident != other.ident


def test_limits_vector_and_status_percent() -> None:
    b = budget(limit={"usd": "2.5", "tokens": {"output": 1000}})
    assert b.limits[0] == 2_500_000_000
    assert b.limits[1] == UNLIMITED
    assert b.limits[5] == 1000
    spent = (1_000_000_000, 3, 0, 0, 0, 900, 0)
    st = status_from("b", "day", None, None, b.limits, spent, (0,) * 7, "config")
    assert st.limit_usd == Decimal("2.5") and st.limit_tokens == {"output": 1000}
    assert st.spent_usd == Decimal(1) and st.spent_tokens["output"] == 900
    assert st.percent == pytest.approx(90.0)
