"""A Claude-Code-shaped agent loop through the real gateway, under a daily USD budget.

Each agent sends what Claude Code sends: Opus (catalog price of
``claude-opus-4-6``), streaming, ``max_tokens: 64000``, a ~60 kB system prompt
with a cache marker, and a conversation that grows by ~3 kB a turn (the
simulator's answer plus ~2 kB of tool output) with the cache marker moved to
the newest turn. The simulator bills cache reads and writes by marker.

An agent stops at its first refusal. For each refusal it records what was left
(the cap minus settled spend, from the admin API) against the true bounds of
the turns in flight at that moment, its own included: the exact input of the
turn (what the simulator bills) at the dearest class it can be billed at
(5-minute cache write), plus the output floor.

    python bench/claude_code_loop.py                      # 1 loop under $2, then 8 sharing $10
    python bench/claude_code_loop.py --loops 1 --budget 2
    python bench/claude_code_loop.py --baseline           # no prefix bounds, no fitting (as before)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx

MODEL = "claude-opus-4-6"
KEY = "tf-bench-claude-code-0001"
ADMIN = "bench-admin-token"
FLOOR = 1024
OUTPUT_TOKENS = 256  # each simulated answer: 1 kB of text
TOOL_BYTES = 2000  # each turn's tool output
SYSTEM_BYTES = 60_000


def system_prompt() -> str:
    line = "Rule {:05d}: read the file before editing it, keep the diff small, run the tests after each change.\n"
    out, i = [], 0
    while sum(map(len, out)) < SYSTEM_BYTES:
        out.append(line.format(i))
        i += 1
    return "".join(out)


SYSTEM = system_prompt()


def tool_output(agent: int, turn: int) -> str:
    row = f"agent {agent} turn {turn}: src/module_{turn % 97}.py:{turn * 7 % 500}: def handler(request): ...\n"
    return (row * (TOOL_BYTES // len(row) + 1))[:TOOL_BYTES]


def request_body(history: list[dict[str, Any]]) -> dict[str, Any]:
    msgs = [json.loads(json.dumps(m)) for m in history]
    msgs[-1]["content"][-1]["cache_control"] = {"type": "ephemeral"}
    return {
        "model": MODEL,
        "max_tokens": 64000,
        "stream": True,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "messages": msgs,
    }


def true_bound(body: dict[str, Any], floor: int = FLOOR) -> Decimal:
    """Exact input (what the simulator bills) at the dearest input class, plus the output floor."""
    from tokenfuse.pricing.catalog import PriceBook
    from tokenfuse.simulator.prompts import anthropic_blocks
    from tokenfuse.simulator.tokens import prompt_tokens

    price = PriceBook.build({}, None).lookup(MODEL)
    assert price is not None
    tokens = prompt_tokens(sum(len(b.text) for b in anthropic_blocks(body)))
    return (tokens * price.dearest_input_rate(False) + floor * price.output).scaleb(-6)


@dataclass
class Refusal:
    agent: int
    turn: int
    left: Decimal  # cap minus settled spend, just after the refusal
    reserved: Decimal  # held by requests in flight at that moment
    inflight_bounds: Decimal  # true bounds of the turns in flight, the refused one included
    own_bound: Decimal
    message: str

    @property
    def ratio(self) -> Decimal:
        return self.left / self.inflight_bounds


@dataclass
class Result:
    cap: Decimal
    turns: int = 0
    lowered: int = 0
    refusals: list[Refusal] = field(default_factory=list)
    spent: Decimal = Decimal(0)


async def budget_status(client: httpx.AsyncClient, url: str) -> tuple[Decimal, Decimal]:
    r = await client.get(f"{url}/_tokenfuse/admin/status", headers={"authorization": f"Bearer {ADMIN}"})
    b = next(x for x in r.json()["budgets"] if x["name"] == "daily")
    return Decimal(str(b["spent_usd"])), Decimal(str(b["reserved_usd"]))


async def agent(
    client: httpx.AsyncClient, url: str, idx: int, cap: Decimal, inflight: dict[int, Decimal], result: Result
) -> None:
    history: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": f"Agent {idx}: fix the failing test."}]}
    ]
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    for turn in range(10_000):
        body = request_body(history)
        inflight[idx] = true_bound(body)
        text: list[str] = []
        async with client.stream("POST", f"{url}/v1/messages", json=body, headers=headers) as r:
            if r.status_code != 200:
                raw = await r.aread()
                spent, reserved = await budget_status(client, url)
                result.refusals.append(
                    Refusal(idx, turn, cap - spent, reserved, sum(inflight.values(), Decimal(0)), inflight[idx],
                            json.loads(raw)["error"]["message"])
                )
                del inflight[idx]
                return
            if r.headers.get("x-tokenfuse-max-tokens"):
                result.lowered += 1
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    ev = json.loads(line[6:])
                    if ev.get("type") == "content_block_delta":
                        text.append(ev["delta"].get("text", ""))
        del inflight[idx]
        result.turns += 1
        history.append({"role": "assistant", "content": [{"type": "text", "text": "".join(text) or "ok"}]})
        history.append({"role": "user", "content": [{"type": "text", "text": tool_output(idx, turn)}]})


async def run(url: str, loops: int, cap: Decimal) -> Result:
    """Drive ``loops`` agents through the gateway at ``url`` until each is refused once."""
    result = Result(cap)
    inflight: dict[int, Decimal] = {}
    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(agent(client, url, i, cap, inflight, result) for i in range(loops)))
        result.spent, _ = await budget_status(client, url)
    return result


def config_text(sim_url: str, db: Path, cap: Decimal, baseline: bool) -> str:
    return f"""
server: {{host: 127.0.0.1, port: 0, admin_token: {ADMIN}}}
store: sqlite:///{db}
ledger: {{batch_interval_ms: 20}}
upstreams:
  - {{name: anthropic, protocol: anthropic, base_url: "{sim_url}", api_key: upstream-anthropic}}
keys:
  - {{name: dev, key: "{KEY}", principal: dev}}
defaults: {{max_tokens_cap: 32000, min_output_tokens: {FLOOR}, lower_max_tokens: {str(not baseline).lower()}}}
budgets:
  - {{name: daily, window: day, limit: {{usd: {cap}}}}}
"""


def bench(loops: int, cap: Decimal, baseline: bool) -> Result:
    from tokenfuse.config import parse_config
    from tokenfuse.gateway.runner import GatewayThread
    from tokenfuse.simulator.server import SimulatorThread

    with tempfile.TemporaryDirectory() as tmp, SimulatorThread() as sim:
        cfg = parse_config(config_text(sim.url, Path(tmp) / "ledger.db", cap, baseline), "bench.yaml")
        urllib_post(f"{sim.url}/_sim/config", {"output_tokens": OUTPUT_TOKENS})
        with GatewayThread(cfg) as gw:
            if baseline:
                gw.gateway.limiter.prefixes = None  # bytes-only input bounds, as before
            return asyncio.run(run(gw.url, loops, cap))


def urllib_post(url: str, data: dict[str, Any]) -> None:
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(data).encode(), method="POST", headers={"content-type": "application/json"}
    )
    urllib.request.urlopen(req).close()


def report(label: str, r: Result) -> str:
    lines = [
        f"### {label}",
        "",
        f"turns answered {r.turns}, of which lowered to fit {r.lowered}; billed ${r.spent:.4f} of ${r.cap} "
        f"({'never past the cap' if r.spent <= r.cap else 'OVER THE CAP'}); left ${r.cap - r.spent:.4f}",
        "",
        "| agent | turn | left at refusal | held in flight | true bounds in flight | left / bounds |",
        "|---|---|---|---|---|---|",
    ]
    for f in sorted(r.refusals, key=lambda x: -x.left):
        lines.append(
            f"| {f.agent} | {f.turn} | ${f.left:.4f} | ${f.reserved:.4f} | ${f.inflight_bounds:.4f} | {f.ratio:.2f} |"
        )
    worst = max((f.ratio for f in r.refusals), default=Decimal(0))
    lines += ["", f"largest left / in-flight true bounds at a refusal: {worst:.2f} (target ≤ 1.25)", ""]
    if r.refusals:
        lines += [f"first refusal says: {r.refusals[0].message}", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loops", type=int, default=None, help="agents sharing the budget (default: 1, then 8)")
    ap.add_argument("--budget", type=Decimal, default=None, help="daily cap in USD")
    ap.add_argument("--baseline", action="store_true", help="bytes-only bounds, no fitting")
    args = ap.parse_args(argv)
    runs = [(args.loops, args.budget or Decimal(2 * args.loops))] if args.loops else [
        (1, Decimal(2)), (8, Decimal(10))
    ]
    ok = True
    for loops, cap in runs:
        r = bench(loops, cap, args.baseline)
        print(report(f"{loops} loop{'s' if loops > 1 else ''}, ${cap}/day" + (" (baseline)" if args.baseline else ""), r))
        ok = ok and r.spent <= cap
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
