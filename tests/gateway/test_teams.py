"""Teams and tags: a team budget shared by two principals, list-valued matches, and `usage --by team`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import ALICE, BOB, make_config
from tokenfuse.cli import main as tokenfuse_main
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

TEAM = """
budgets:
  - {name: platform-team, match: {team: platform}, window: day, limit: {requests: 2}}
  - {name: tagged, match: {tags: [nightly, adhoc]}, window: day, limit: {requests: 100}}
  - {name: pair, match: {principal: [alice, bob], protocol: [openai, anthropic]}, window: day, limit: {requests: 100}}
"""


@pytest.fixture
def gw(sim: SimulatorThread, tmp_path: Path) -> Iterator[GatewayThread]:
    config = make_config(sim.url, tmp_path / "ledger.db", TEAM)
    # The team and tags come with the keys: add them to both of make_config's keys.
    keys = [k.model_copy(update={"team": "platform", "tags": ["nightly"] if k.principal == "bob" else []})
            for k in config.keys]
    config = config.model_copy(update={"keys": keys})
    with GatewayThread(config) as g:
        yield g


def _chat(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
        json={"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}, timeout=30,
    )


def test_team_budget_shared_by_two_principals_refuses_both(
    gw: GatewayThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _chat(gw.url, ALICE).status_code == 200
    assert _chat(gw.url, BOB).status_code == 200
    for key in (ALICE, BOB):
        refused = _chat(gw.url, key)
        assert refused.status_code == 429 and "platform-team" in refused.text, refused.text
    assert gw.flush(10.0)
    cfg = tmp_path / "usage.yaml"
    cfg.write_text(f"store: sqlite:///{tmp_path / 'ledger.db'}\n")
    assert tokenfuse_main(["usage", "--config", str(cfg), "--by", "team", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (platform,) = [g for g in report["groups"] if g["team"] == "platform"]
    assert (platform["requests"], platform["refused"]) == (2, 2)
    assert tokenfuse_main(["usage", "--config", str(cfg), "--team", "platform"]) == 0
    assert "test-model" in capsys.readouterr().out


def test_tags_and_list_matches_count_the_right_requests(gw: GatewayThread) -> None:
    assert _chat(gw.url, BOB).status_code == 200  # bob carries tag nightly
    assert _chat(gw.url, ALICE).status_code == 200  # alice has no tags
    status = {s["name"]: s for s in httpx.get(
        f"{gw.url}/_tokenfuse/admin/status", headers={"authorization": "Bearer admin-secret"}, timeout=10
    ).json()["budgets"]}
    assert status["tagged"]["spent_requests"] == 1
    assert status["pair"]["spent_requests"] == 2
    assert status["platform-team"]["spent_requests"] == 2
