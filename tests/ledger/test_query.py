from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from tests.ledger.conftest import make_row
from tokenfuse.ledger.query import format_usd, rows, usage_totals
from tokenfuse.ledger.record import LedgerRow
from tokenfuse.ledger.writer import LedgerWriter

T0 = 1_800_000_000.0


def _fill(url: str, data: list[LedgerRow]) -> None:
    w = LedgerWriter(url)
    w.start()
    for r in data:
        w.write(r)
    w.close()


def _sample() -> list[LedgerRow]:
    return [
        make_row(
            0,
            model="opus",
            principal="alice",
            workflow="droid",
            session="s1",
            key_name="alice-droid",
            input_uncached=100,
            cache_read=1000,
            cache_write=50,
            cache_write_1h=25,
            output=10,
            cost_usd=Decimal("0.0105"),
        ),
        make_row(
            1,
            model="opus",
            principal="alice",
            workflow="droid",
            session="s2",
            key_name="alice-droid",
            input_uncached=1,
            cache_read=0,
            cache_write=0,
            cache_write_1h=0,
            output=2,
            cost_usd=Decimal("0.000051"),
            outcome="client_abort",
            estimated=True,
        ),
        make_row(
            2,
            model="haiku",
            principal="bob",
            workflow="batch",
            session=None,
            key_name="bob-batch",
            input_uncached=7,
            cache_read=0,
            cache_write=0,
            cache_write_1h=0,
            output=3,
            cost_usd=Decimal("0.000022"),
        ),
        make_row(
            3,
            model="opus",
            principal="bob",
            workflow="batch",
            session=None,
            key_name="bob-batch",
            input_uncached=0,
            cache_read=0,
            cache_write=0,
            cache_write_1h=0,
            output=0,
            cost_usd=Decimal(0),
            outcome="refused",
            reason="budget alice-monthly",
        ),
        make_row(
            4,
            model=None,
            principal=None,
            workflow=None,
            session=None,
            key_name=None,
            protocol="openai",
            input_uncached=0,
            cache_read=0,
            cache_write=0,
            cache_write_1h=0,
            output=0,
            cost_usd=Decimal(0),
            outcome="unauthorized",
            status=401,
        ),
    ]


def test_totals_have_the_documented_shape(store_url: str) -> None:
    _fill(store_url, _sample())
    totals = usage_totals(store_url)
    assert totals == {
        "requests": 3,
        "refused": 2,
        "cost_usd": "0.010573",
        "by_model": {
            "(none)": {
                "requests": 0,
                "input_uncached": 0,
                "cache_read": 0,
                "cache_write": 0,
                "output": 0,
                "cost_usd": "0.000000",
            },
            "haiku": {
                "requests": 1,
                "input_uncached": 7,
                "cache_read": 0,
                "cache_write": 0,
                "output": 3,
                "cost_usd": "0.000022",
            },
            "opus": {
                "requests": 2,
                "input_uncached": 101,
                "cache_read": 1000,
                "cache_write": 75,
                "output": 12,
                "cost_usd": "0.010551",
            },
        },
    }


@pytest.mark.parametrize(
    ("filters", "requests", "cost"),
    [
        ({"principal": "alice"}, 2, "0.010551"),
        ({"workflow": "batch"}, 1, "0.000022"),
        ({"session": "s2"}, 1, "0.000051"),
        ({"key": "bob-batch"}, 1, "0.000022"),
        ({"since": T0 + 1}, 2, "0.000073"),
        ({"until": T0 + 1}, 1, "0.010500"),
        ({"since": T0 + 1, "until": T0 + 2, "principal": "alice"}, 1, "0.000051"),
        ({"principal": "nobody"}, 0, "0.000000"),
    ],
)
def test_filters(sqlite_url: str, filters: dict[str, object], requests: int, cost: str) -> None:
    _fill(sqlite_url, _sample())
    totals = usage_totals(sqlite_url, **filters)  # type: ignore[arg-type]
    assert totals["requests"] == requests
    assert totals["cost_usd"] == cost


@pytest.mark.services
def test_filters_on_postgresql(pg_url: str) -> None:
    _fill(pg_url, _sample())
    assert usage_totals(pg_url, principal="alice", since=T0 + 1)["cost_usd"] == "0.000051"
    assert usage_totals(pg_url, key="bob-batch")["refused"] == 1


def test_rows_read_back_what_was_written(store_url: str) -> None:
    data = _sample()
    _fill(store_url, data)
    assert rows(store_url) == data
    assert [r.request_id for r in rows(store_url, principal="bob")] == ["req-00000002", "req-00000003"]


def test_a_missing_sqlite_file_is_an_empty_ledger_and_is_not_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'never.db'}"
    assert usage_totals(url) == {"requests": 0, "refused": 0, "cost_usd": "0.000000", "by_model": {}}
    assert rows(url) == []
    assert not (tmp_path / "never.db").exists()


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal(0), "0.000000"),
        (Decimal("-0"), "0.000000"),
        (Decimal("1.5"), "1.500000"),
        (Decimal("1.234567"), "1.234567"),
        (Decimal("0.000000075"), "0.000000075"),
        (Decimal("7.5E-8"), "0.000000075"),
        (Decimal("12.500000000000"), "12.500000"),
        (Decimal("46336"), "46336.000000"),
    ],
)
def test_format_usd_is_exact_with_at_least_six_places(value: Decimal, text: str) -> None:
    assert format_usd(value) == text
    assert Decimal(text) == value
