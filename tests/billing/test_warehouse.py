"""Warehouse engines: every check from one definition, transpiled by sqlglot; the Spark run
gives the same findings as DuckDB (and as `detect` on files) on the generated incident exports."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlglot

from tokenfuse.billing import warehouse
from tokenfuse.billing.detect import detect
from tokenfuse.billing.load import load
from tokenfuse.billing.sample import generate

AS_OF = date(2026, 10, 1)
INCIDENTS = ["runaway", "cache_miss", "cache_miss_marketplace", "noisy_batch", "compute_spike", "missing_days",
             "tiny_baseline"]
FLAVOURS = [("cur-2.0", "parquet"), ("focus-1.0", "csv.gz"), ("focus-1.2", "csv")]


@pytest.mark.parametrize("engine", warehouse.ENGINES)
@pytest.mark.parametrize("check", warehouse.CHECKS)
def test_every_check_renders_for_every_engine(engine: str, check: str) -> None:
    sql = warehouse.render(engine, check, "focus-1.2", "billing.focus", AS_OF)
    dialect = {"athena": "athena"}.get(engine, engine)
    parsed = sqlglot.parse_one(sql, read=dialect)  # the engine's own parser accepts it
    assert parsed is not None and "billing.focus" in sql and "SkuMeter" in sql


def test_one_definition_differs_only_by_dialect() -> None:
    spark = warehouse.render("spark", "runaway", "cur-2.0", "t", AS_OF)
    bq = warehouse.render("bigquery", "runaway", "cur-2.0", "t", AS_OF)
    assert "RLIKE" in spark and "REGEXP_CONTAINS" in bq
    assert "DATEDIFF" in spark and "DATE_DIFF" in bq


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    d = tmp_path_factory.mktemp("wh")
    out = {}
    for flavour, ext in FLAVOURS:
        path = d / f"{flavour}.{ext}"
        out[flavour] = (path, generate(str(path), flavour, days=40, accounts=9, incidents=INCIDENTS))
    return out


def _detect_summary(path: Path) -> tuple[set[str], set[str]]:
    det = detect(load([str(path)]), AS_OF)
    return {r.account for r in det.flagged}, {c.account for c in det.cache_misses}


@pytest.mark.parametrize(("flavour", "_ext"), FLAVOURS)
def test_duckdb_engine_finds_what_detect_finds(exports: dict[str, tuple[Path, Any]], flavour: str, _ext: str) -> None:
    path, m = exports[flavour]
    found = warehouse.summarise(warehouse.run("duckdb", [str(path)], AS_OF))
    flagged, misses = _detect_summary(path)
    assert {r[0] for r in found["runaway"]} == flagged == {a for a, w in m.expect_runaway().items() if w}
    assert {r[0] for r in found["cache_miss"]} == misses
    det = detect(load([str(path)]), AS_OF)
    budgets = {b.account: f"{b.monthly_budget_usd:.2f}" for b in det.budgets}
    assert {r[0]: r[2] for r in found["budget"]} == budgets


def _spark_skip_reason() -> str | None:
    why = warehouse.spark_unavailable()
    if why and os.environ.get("TOKENFUSE_REQUIRE_SPARK") == "1":
        pytest.fail(f"TOKENFUSE_REQUIRE_SPARK=1 but {why}")
    return why


@pytest.fixture(scope="module")
def spark() -> Any:
    why = _spark_skip_reason()
    if why:
        pytest.skip(f"Spark engine not tested: {why}")
    session = warehouse.spark_session()
    yield session
    session.stop()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("flavour", "ext"), FLAVOURS)
def test_spark_findings_identical_to_duckdb(
    exports: dict[str, tuple[Path, Any]], spark: Any, flavour: str, ext: str
) -> None:
    path, _m = exports[flavour]
    files = [str(path)]
    flav, columns, fmt = warehouse._columns_of(files)
    assert flav == flavour
    on_spark = warehouse.summarise(warehouse._run_spark(files, fmt, flav, columns, AS_OF, warehouse.CHECKS, spark))
    on_duckdb = warehouse.summarise(warehouse.run("duckdb", files, AS_OF))
    assert on_spark == on_duckdb
    flagged, misses = _detect_summary(path)
    assert {r[0] for r in on_spark["runaway"]} == flagged
    assert {r[0] for r in on_spark["cache_miss"]} == misses
