"""End to end: an agent loop through the gateway with the official Anthropic SDK
against the simulator. Without cache markers the cache never engages and the
cache-miss guard reports the dollars a working cache would have saved; with
markers it stays quiet."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import pytest

from tests.gateway.conftest import ALICE, Stack, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.simulator.server import SimulatorThread

MODEL = "test-claude"
# About 1,500 simulator tokens (4 bytes each): above the smallest cacheable prefix.
SYSTEM = "You are a careful coding agent. Follow the repository's conventions. " * 90


class Webhook:
    """Collects the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(200)
                self.end_headers()
                with hook.cond:
                    hook.received.append(body)
                    hook.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/T000"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def wait_for(self, pred: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (found := [r for r in self.received if pred(r)]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching webhook call; got {self.received}")
                self.cond.wait(left)
        return found


@contextmanager
def running(tmp_path: Path, guards: str) -> Iterator[tuple[Stack, Webhook]]:
    hook = Webhook()
    hook.thread.start()
    extra = f"""
alerts: {{webhooks: ["{hook.url}"]}}
guards: {guards}
"""
    try:
        with SimulatorThread() as sim:
            config = make_config(sim.url, tmp_path / "ledger.db", extra)
            with GatewayThread(config) as gw:
                yield Stack(sim.url, gw, tmp_path / "ledger.db"), hook
    finally:
        hook.server.shutdown()
        hook.server.server_close()


@pytest.fixture
def stack_with_hook(tmp_path: Path) -> Iterator[tuple[Stack, Webhook]]:
    only_cache = "{cache_miss: {min_requests: 3, min_usd: 0}, context_growth: {enabled: false}, loop: {enabled: false}}"
    with running(tmp_path, only_cache) as pair:
        yield pair


def agent_loop(stack: Stack, session: str, markers: bool, steps: int = 4) -> None:
    client = anthropic.Anthropic(
        base_url=stack.url, api_key=ALICE, max_retries=0, default_headers={"x-tokenfuse-session": session}
    )
    system: Any = SYSTEM
    if markers:
        system = [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}]
    history: list[dict[str, Any]] = [{"role": "user", "content": f"[{session}] make the tests pass"}]
    for step in range(steps):
        messages = [dict(m) for m in history]
        if markers:
            last = messages[-1]
            messages[-1] = {
                "role": last["role"],
                "content": [
                    {"type": "text", "text": last["content"], "cache_control": {"type": "ephemeral"}}
                ],
            }
        reply = client.messages.create(model=MODEL, max_tokens=64, system=system, messages=messages)  # type: ignore[arg-type]
        text = "".join(b.text for b in reply.content if b.type == "text")
        history.append({"role": "assistant", "content": text})
        history.append({"role": "user", "content": f"tool output of step {step}: " + "x = 1\n" * 100})


def test_uncached_agent_loop_is_priced_and_a_cached_one_is_not(
    stack_with_hook: tuple[Stack, Webhook],
) -> None:
    stack, hook = stack_with_hook
    agent_loop(stack, "agent-cached", markers=True)
    agent_loop(stack, "agent-uncached", markers=False)
    (finding,) = hook.wait_for(lambda r: r.get("guard") == "cache_miss")
    assert finding["session"] == "alice/agent-uncached" and finding["event"] == "guard_finding"

    rows = [r for r in stack.rows() if r["session"] == "alice/agent-uncached"]
    assert len(rows) == 4 and all(r["cache_read"] == 0 and r["input_uncached"] > 1024 for r in rows)
    # Requests 2-4 each re-sent the whole previous prompt uncached.
    repeated = sum(r["input_uncached"] for r in rows[:3])
    price = stack.gw.gateway.prices.lookup(MODEL)
    expected = Decimal(repeated) * (price.input - price.cache_read) / 10**6
    assert finding["repeated_uncached_tokens"] == repeated
    assert Decimal(finding["savings_usd"]) == expected
    assert f"{repeated:,} × ($3.00/M − $0.30/M) = $" in finding["text"]

    cached_rows = [r for r in stack.rows() if r["session"] == "alice/agent-cached"]
    assert len(cached_rows) == 4 and all(r["cache_read"] > 1024 for r in cached_rows[1:])
    # Alerts are sent in order, so the cached loop's would have arrived first.
    assert [r["session"] for r in hook.received if r.get("guard") == "cache_miss"] == ["alice/agent-uncached"]
    assert any(p["session"] == "alice/agent-uncached" for p in stack.gw.gateway.guards.recent())


def test_loop_guard_refuses_the_repeat_in_the_callers_protocol(tmp_path: Path) -> None:
    loop_only = (
        "{cache_miss: {enabled: false}, context_growth: {enabled: false}, loop: {repeats: 3, action: refuse}}"
    )
    with running(tmp_path, loop_only) as (stack, hook):
        client = anthropic.Anthropic(
            base_url=stack.url, api_key=ALICE, default_headers={"x-tokenfuse-session": "retry"}
        )
        ask = [{"role": "user", "content": "run the failing step again"}]
        for _ in range(2):
            client.messages.create(model=MODEL, max_tokens=32, messages=ask)  # type: ignore[arg-type]
        with pytest.raises(anthropic.APIStatusError) as err:
            client.messages.create(model=MODEL, max_tokens=32, messages=ask)  # type: ignore[arg-type]
        assert err.value.status_code == 402 and "Do not retry" in err.value.message
        # A different request in the same session still goes through.
        client.messages.create(model=MODEL, max_tokens=32, messages=[{"role": "user", "content": "try X"}])
        (finding,) = hook.wait_for(lambda r: r.get("guard") == "loop")
        assert finding["severity"] == "critical" and finding["session"] == "alice/retry"
        rows = stack.rows()
        assert [r["outcome"] for r in rows] == ["ok", "ok", "refused", "ok"]
        assert rows[2]["reason"] == "guard loop"
        assert len(stack.served()) == 3  # the refused one never reached the provider, and was not retried
