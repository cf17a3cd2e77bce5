from __future__ import annotations

from dataclasses import fields
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from tests.ledger.conftest import make_row
from tokenfuse.ledger.record import LedgerRow, format_cost
from tokenfuse.ledger.schema import COLUMN_NAMES


def test_fields_are_the_schema_columns_in_order() -> None:
    assert tuple(f.name for f in fields(LedgerRow)) == COLUMN_NAMES


def test_sqlite_tuple_stores_cost_as_fixed_point_text_and_estimated_as_int() -> None:
    row = make_row(cost_usd=Decimal("7.5E-8"), estimated=True)
    values = dict(zip(COLUMN_NAMES, row.as_tuple("sqlite"), strict=True))
    assert values["cost_usd"] == "0.000000075"
    assert values["estimated"] == 1
    assert values["request_id"] == row.request_id


def test_postgresql_tuple_keeps_decimal_and_bool() -> None:
    row = make_row(cost_usd=Decimal("1.25"), estimated=True)
    values = dict(zip(COLUMN_NAMES, row.as_tuple("postgresql"), strict=True))
    assert values["cost_usd"] == Decimal("1.25") and isinstance(values["cost_usd"], Decimal)
    assert values["estimated"] is True


def test_format_cost_never_uses_exponents() -> None:
    assert format_cost(Decimal("1E-12")) == "0.000000000001"
    assert format_cost(Decimal("12.50")) == "12.50"


@given(
    cost=st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False, places=12),
    estimated=st.booleans(),
    tokens=st.integers(min_value=0, max_value=2**40),
)
def test_round_trip_through_the_sqlite_form(cost: Decimal, estimated: bool, tokens: int) -> None:
    row = make_row(cost_usd=cost, estimated=estimated, output=tokens, session=None)
    back = LedgerRow.from_tuple(row.as_tuple("sqlite"))
    assert back == row
    assert back.cost_usd == cost
