"""`tokenfuse kill`, `tokenfuse revive` and `tokenfuse budget`: output, store effects, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfuse import cli
from tokenfuse.config import load_config
from tokenfuse.limits import budgetcli, killcli
from tokenfuse.limits.killswitch import KillSwitchStore
from tokenfuse.limits.runtime import RuntimeBudgetStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "tokenfuse.yaml"
    cfg.write_text(
        f"store: sqlite:///{tmp_path / 'store.db'}\n"
        "kill_poll_ms: 100\n"
        "budgets:\n  - {name: alice-monthly, match: {principal: alice}, window: month, limit: {usd: 200}}\n"
    )
    return cfg


def switches(config: Path) -> list[tuple[str, str, str | None]]:
    store = KillSwitchStore(load_config(config).store)
    try:
        return [(s.scope, s.value, s.reason) for s in store.list()]
    finally:
        store.close()


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_kill_list_revive_through_the_dispatcher(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kill", "--config", str(config), "--workflow", "droid", "--reason", "runaway loop"]) == 0
    out = capsys.readouterr().out
    assert "killed workflow=droid (reason: runaway loop)" in out and "within 100 ms" in out
    assert switches(config) == [("workflow", "droid", "runaway loop")]

    assert cli.main(["kill", "--config", str(config), "--model", "*opus*"]) == 0
    assert cli.main(["kill", "--config", str(config), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()[-2:]
    assert listed[0].startswith("workflow=droid") and listed[0].endswith("reason: runaway loop")
    assert listed[1].startswith("model=*opus*")

    assert cli.main(["revive", "--config", str(config), "--workflow", "droid"]) == 0
    assert "revived workflow=droid" in capsys.readouterr().out
    assert switches(config) == [("model", "*opus*", None)]


@pytest.mark.parametrize("flag", ["--key", "--principal", "--session"])
def test_each_scope_flag(config: Path, flag: str) -> None:
    assert killcli.main(["kill", "--config", str(config), flag, "x1"]) == 0
    assert switches(config) == [(flag[2:], "x1", None)]
    assert killcli.main(["revive", "--config", str(config), flag, "x1"]) == 0
    assert switches(config) == []


def test_kill_all_and_revive_all(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert killcli.main(["kill", "--config", str(config), "--all", "--reason", "incident"]) == 0
    assert "killed all traffic (reason: incident)" in capsys.readouterr().out
    assert switches(config) == [("all", "*", "incident")]
    assert killcli.main(["revive", "--config", str(config), "--all"]) == 0
    assert switches(config) == []


def test_revive_of_nothing_is_an_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert killcli.main(["revive", "--config", str(config), "--workflow", "droid"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "no kill switch for workflow=droid" in line and "--list" in line


def test_no_scope_given(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert killcli.main(["kill", "--config", str(config), "--reason", "x"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "--workflow" in line and "--all" in line
    assert switches(config) == []


def test_two_scopes_are_refused_by_the_parser(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        killcli.main(["kill", "--config", str(config), "--workflow", "a", "--all"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert killcli.main(["kill", "--config", str(tmp_path / "nope.yaml"), "--all"]) == 2
    assert "nope.yaml: no such file" in one_line(capsys.readouterr().err)
    assert budgetcli.main(["list", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml: no such file" in one_line(capsys.readouterr().err)


def test_unreachable_store_is_one_line_without_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "pg.yaml"
    cfg.write_text("store: postgresql://tf:hunter2@127.0.0.1:1/db?connect_timeout=2\n")
    assert killcli.main(["kill", "--config", str(cfg), "--all"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "cannot use the store postgresql://tf@127.0.0.1:1/db" in line
    assert "hunter2" not in line


def test_budget_add_list_replace_remove(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["add", "--config", str(config), "--name", "opus-hour", "--match", "principal=alice"]
    args += [
        "--match",
        "model=*opus*",
        "--window",
        "rolling:1h",
        "--usd",
        "2.50",
        "--tokens",
        "input_uncached=5000",
    ]
    assert cli.main(["budget", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("added run-time budget opus-hour") and "within 100 ms" in out
    store = RuntimeBudgetStore(load_config(config).store)
    [b] = store.list()
    assert b.match.principal == "alice" and b.match.model == "*opus*"
    assert (
        b.rolling_seconds == 3600
        and str(b.limit.usd) == "2.50"
        and b.limit.tokens == {"input_uncached": 5000}
    )

    assert budgetcli.main(["add", "--config", str(config), "--name", "opus-hour", "--requests", "9"]) == 0
    assert capsys.readouterr().out.startswith("replaced run-time budget opus-hour")
    [b] = store.list()
    assert b.limit.requests == 9 and b.limit.usd is None and b.window == "month"

    assert budgetcli.main(["list", "--config", str(config)]) == 0
    listed = capsys.readouterr().out
    assert "opus-hour" in listed and "requests=9" in listed and "(all traffic)" in listed

    assert budgetcli.main(["remove", "--config", str(config), "opus-hour"]) == 0
    assert store.list() == []
    assert budgetcli.main(["remove", "--config", str(config), "opus-hour"]) == 1
    assert "no run-time budget named 'opus-hour'" in one_line(capsys.readouterr().err)
    store.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--window", "fortnight", "--usd", "1"], "window: use minute, hour, day"),
        (["--window", "rolling:1x", "--usd", "1"], "'1x' is not a duration"),
        (["--usd", "-1"], "limit.usd"),
        (["--usd", "ten"], "limit.usd"),
        ([], "give at least one limit"),
        (["--tokens", "outputs=5"], "unknown token class 'outputs'"),
        (["--tokens", "output=lots"], "whole number of tokens"),
        (["--match", "team=a", "--usd", "1"], "--match team=...: unknown field"),
        (["--match", "principal", "--usd", "1"], "must look like NAME=VALUE"),
    ],
)
def test_budget_add_errors(
    config: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    assert budgetcli.main(["add", "--config", str(config), "--name", "b", *extra]) == 2
    assert message in one_line(capsys.readouterr().err)
    assert RuntimeBudgetStore(load_config(config).store).list() == []


def test_budget_add_refuses_a_config_budget_name(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert budgetcli.main(["add", "--config", str(config), "--name", "alice-monthly", "--usd", "5"]) == 2
    line = one_line(capsys.readouterr().err)
    assert "'alice-monthly' is defined in" in line and "tokenfuse.yaml" in line


def test_budget_without_action(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert budgetcli.main([]) == 2
    assert "add, list or remove" in one_line(capsys.readouterr().err)
