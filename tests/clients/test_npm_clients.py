"""Budget refusals as npm clients show them: the Vercel AI SDK (`ai` + `@ai-sdk/openai`)
and Codex CLI (`@openai/codex`), each against a real gateway and simulator.

Each refused call must reach the gateway once (one ledger row) and the user must
see which budget refused. The packages are pinned in package.json here; `.ci/run`
installs them. Without `node` these tests skip and say so; with node but without
the packages they fail, since CI is meant to have installed them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

pytestmark = [
    pytest.mark.socket,
    pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: npm client tests need Node 20+"),
]

HERE = Path(__file__).parent
MODULES = HERE / "node_modules"
CODEX = MODULES / ".bin" / "codex"
BUDGET = "alice-npm-day"
# Nothing fits under a millionth of a dollar, whatever a gateway may lower a limit to.
REFUSING = f"""
budgets:
  - {{name: {BUDGET}, match: {{principal: alice}}, window: day, limit: {{usd: 0.000001}}}}
"""


def need(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path.relative_to(HERE)} is missing: run `npm ci` in {HERE} (.ci/run does)")


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread() as s:
        yield s


def gateway(sim: SimulatorThread, tmp_path: Path, extra: str) -> GatewayThread:
    return GatewayThread(make_config(sim.url, tmp_path / "ledger.db", extra))


@pytest.fixture
def refusing(sim: SimulatorThread, tmp_path: Path) -> Iterator[Stack]:
    with gateway(sim, tmp_path, REFUSING) as gw:
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        st.reset_sim()
        yield st


def ai_sdk(base_url: str, api: str) -> dict[str, Any]:
    need(MODULES / "ai")
    need(MODULES / "@ai-sdk" / "openai")
    out = subprocess.run(
        ["node", str(HERE / "ai_sdk_call.mjs"), f"{base_url}/v1", ALICE, "test-model", api],
        cwd=HERE, capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def refused_rows(st: Stack) -> list[dict[str, Any]]:
    return [r for r in st.rows() if r["outcome"] == "refused"]


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_ai_sdk_sends_a_budget_refusal_once_and_shows_the_budget(refusing: Stack, api: str) -> None:
    got = ai_sdk(refusing.url, api)
    assert got["ok"] is False
    # A RetryError ("Failed after 3 attempts") would mean the SDK retried the refusal.
    assert got["name"] == "AI_APICallError" and got["attempts"] == 1, got
    assert BUDGET in got["message"], got
    rows = refusing.rows()
    assert len(rows) == 1 and rows[0]["outcome"] == "refused", rows
    assert refusing.served() == []


def test_ai_sdk_is_served_normally_when_the_budget_fits(sim: SimulatorThread, tmp_path: Path) -> None:
    with gateway(sim, tmp_path, "") as gw:
        got = ai_sdk(gw.url, "chat")
        st = Stack(sim.url, gw, tmp_path / "ledger.db")
        rows = st.rows()
    assert got["ok"] is True and got["text"], got
    assert [r["outcome"] for r in rows] == ["ok"]


def codex(base_url: str, home: Path) -> subprocess.CompletedProcess[str]:
    need(CODEX)
    home.mkdir(exist_ok=True)
    # A custom provider is how Codex talks to an OpenAI-compatible base URL; its key
    # comes from the environment variable the provider names.
    provider = (
        f'model_providers.tokenfuse={{name="tokenfuse", base_url="{base_url}/v1", '
        'env_key="TOKENFUSE_KEY", wire_api="responses"}'
    )
    # Codex 0.171 sends OpenAI's hosted web_search tool by default, billed per call on
    # OpenAI's side, which the gateway cannot bound and refuses (pricing.allow_unbounded).
    no_web_search = 'web_search="disabled"'
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(CODEX_HOME=str(home), TOKENFUSE_KEY=ALICE, NO_COLOR="1")
    return subprocess.run(
        [str(CODEX), "exec", "--skip-git-repo-check", "-m", "test-model", "-c", provider,
         "-c", "model_provider=tokenfuse", "-c", no_web_search, "Say hello."],
        cwd=home, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180, check=False,
    )


def test_codex_sends_a_budget_refusal_once_and_shows_the_budget(refusing: Stack, tmp_path: Path) -> None:
    out = codex(refusing.url, tmp_path / "codex-home")
    shown = out.stdout + out.stderr
    assert out.returncode != 0, shown
    # Codex replaces a 429 insufficient_quota by "Quota exceeded. Check your plan and
    # billing details." and retries other statuses ("Reconnecting... 1/5").
    assert "Quota exceeded" not in shown and "Reconnecting" not in shown, shown
    assert BUDGET in shown, shown
    rows = refusing.rows()
    assert len(rows) == 1 and rows[0]["outcome"] == "refused", rows
    assert refusing.served() == []
