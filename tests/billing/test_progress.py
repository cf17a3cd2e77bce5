from __future__ import annotations

import io

import duckdb
import pytest

from tokenfuse.billing import progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("SET enable_progress_bar=true")
    con.execute("SET enable_progress_bar_print=false")
    return con


def test_progress_line_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    monkeypatch.setattr(progress, "_POLL_S", 0.01)
    con = _con()
    out = Tty()
    progress.execute(con, "CREATE TABLE t AS SELECT sum(hash(range)) AS s FROM range(400000000)", "loading", out)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (1,)
    assert "loading [" in out.getvalue() and "%" in out.getvalue()


def test_nothing_written_when_not_a_terminal() -> None:
    con = _con()
    out = io.StringIO()
    progress.execute(con, "CREATE TABLE t AS SELECT 1 AS x", "loading", out)
    assert out.getvalue() == ""
    assert con.execute("SELECT x FROM t").fetchone() == (1,)


def test_errors_reach_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "SHOW_AFTER_S", 0.0)
    with pytest.raises(duckdb.Error):
        progress.execute(_con(), "SELECT CAST('x' AS INTEGER)", "loading", Tty())
