"""`tokenfuse kill`, `tokenfuse revive` and `tokenfuse budget`: output, store effects, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfuse import cli
from tokenfuse.config import load_config
from tokenfuse.control import budgetcli, killcli
from tokenfuse.control.killswitch import KillSwitchStore
from tokenfuse.control.runtime import RuntimeBudgetStore


@pytest.fixture
def config(tmp_path: Path) -> Path:
    cfg = tmp_path / "tokenfuse.yaml"
    cfg.write_text(
        f"store: sqlite:///{tmp_path / 'store.db'}\n"
        "kill_poll_ms: 100\n"
        f"keys:\n  - {{name: alice-droid, key_sha256: '{'a' * 64}', principal: alice, workflow: droid}}\n"
        f"  - {{name: x1, key_sha256: '{'b' * 64}', principal: x1, workflow: batch}}\n"
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
        (["--match", "tenant=a", "--usd", "1"], "--match tenant=...: unknown field"),
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


# -- naming a target that does not exist ---------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "close"),
    [("--key", "nosuchkey", None), ("--workflow", "bacth", "batch"), ("--principal", "alcie", "alice")],
)
def test_killing_an_unknown_target_is_refused_with_the_close_matches(
    config: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, close: str | None
) -> None:
    assert killcli.main(["kill", "--config", str(config), flag, value]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"no {flag[2:]} named {value!r}" in line and "nothing was killed" in line and "--force" in line
    if close:
        assert f"did you mean {close}" in line
    assert switches(config) == []
    assert killcli.main(["kill", "--config", str(config), flag, value, "--force"]) == 0
    assert switches(config) == [(flag[2:], value, None)]


def test_targets_named_only_by_budgets_or_keys_with_unset_secrets_are_known(tmp_path: Path) -> None:
    cfg = tmp_path / "t.yaml"
    cfg.write_text(
        f"store: sqlite:///{tmp_path / 's.db'}\n"
        "keys:\n  - {name: ci-bot, key: '${TF_TEST_SECRET_NOT_SET_ANYWHERE}', principal: ci, workflow: nightly}\n"
        "budgets:\n  - {name: b, match: {workflow: reports}, limit: {usd: 1}}\n"
    )
    for flag, value in (
        ("--key", "ci-bot"),
        ("--principal", "ci"),
        ("--workflow", "nightly"),
        ("--workflow", "reports"),
    ):
        assert killcli.main(["kill", "--config", str(cfg), flag, value]) == 0, (flag, value)


# -- the store is down ----------------------------------------------------------


def outage_config(tmp_path: Path, store: str, gateway_port: int, token: str | None = "admin-secret") -> Path:
    cfg = tmp_path / "outage.yaml"
    server = f"server: {{host: 127.0.0.1, port: {gateway_port}" + (
        f", admin_token: {token}}}" if token else "}"
    )
    cfg.write_text(f"{server}\nstore: {store}\nkill_poll_ms: 100\n")
    return cfg


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_store_and_gateway_both_unreachable_fails_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = outage_config(tmp_path, "postgresql://tf:hunter2@127.0.0.1:1/db?connect_timeout=2", free_port())
    assert killcli.main(["kill", "--config", str(cfg), "--all", "--reason", "incident"]) == 1
    line = one_line(capsys.readouterr().err)
    assert "cannot use the store postgresql://tf@127.0.0.1:1/db" in line
    assert "no gateway answered at http://127.0.0.1:" in line and "NOT set anywhere" in line
    assert "hunter2" not in line and "admin-secret" not in line


def test_store_down_kill_is_applied_by_the_gateway_and_persisted_when_the_store_returns(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from tests.gateway.conftest import make_config
    from tests.limits.flaky_tcp import FlakyTCP
    from tokenfuse.gateway.runner import GatewayThread
    from tokenfuse.limits.context import RequestContext

    proxy = FlakyTCP("127.0.0.1", 5432)
    store = proxy.url_for(pg_url)
    gw_config = make_config("http://127.0.0.1:9", tmp_path / "unused.db").model_copy(update={"store": store})
    try:
        with GatewayThread(gw_config) as gw:
            port = int(gw.url.rsplit(":", 1)[1])
            cfg = outage_config(tmp_path, store, port)
            proxy.down()
            assert (
                killcli.main(
                    ["kill", "--config", str(cfg), "--principal", "alice", "--force", "--reason", "r"]
                )
                == 0
            )
            captured = capsys.readouterr()
            assert "cannot use the store" in captured.err
            out = captured.out.strip()
            assert out.startswith("killed principal=alice on the gateway at http://127.0.0.1:")
            assert "applied on this gateway; not yet persisted: the store is unreachable" in out
            assert "other replicas will apply it when the store is reachable" in out
            alice = RequestContext("alice-droid", "alice", "droid", None, "test-model", "openai")
            assert gw.gateway.kills.check(alice) is not None  # applied at once, on this replica

            # Listing during the outage shows what the gateway applies.
            assert killcli.main(["kill", "--config", str(cfg), "--list"]) == 0
            assert "principal=alice" in capsys.readouterr().out

            proxy.up()
            deadline = time.monotonic() + 10
            while [(s.scope, s.value) for s in KillSwitchStore(pg_url).list()] != [("principal", "alice")]:
                assert time.monotonic() < deadline, "the pending kill was never persisted"
                time.sleep(0.05)
            assert gw.gateway.watcher.pending() == []
            assert gw.gateway.kills.check(alice) is not None
    finally:
        proxy.close()


def test_budget_add_takes_lists_and_teams(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tokenfuse.yaml"
    cfg.write_text(f"store: sqlite:///{tmp_path / 'l.db'}\n")
    assert cli.main(["budget", "add", "--config", str(cfg), "--name", "pair", "--match", "principal=alice,bob",
                 "--match", "team=platform", "--usd", "5"]) == 0
    (b,) = RuntimeBudgetStore(f"sqlite:///{tmp_path / 'l.db'}").list()
    assert (b.match.principal, b.match.team) == (["alice", "bob"], "platform")
