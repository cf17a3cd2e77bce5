"""Issue 13: what automatic prompt caching adds to the gateway's own time per request.

    python bench/caching_overhead.py [--turns 30] [--loops 5]

Runs the same agent loop (Anthropic SDK, ~8 kB system prompt, tool output growing the context
every turn) through one real gateway and the provider simulator, once for a key whose workflow
has `caching.auto` on and once for a key without it, interleaved. The figure is the gateway's own
time per request from its ledger (`overhead_ms`: the request's time minus the time spent waiting
on the upstream), so the simulator's speed does not enter it. Not a test: numbers for one machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anthropic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.gateway.conftest import ALICE, BOB, make_config
from tokenfuse.gateway.runner import GatewayThread
from tokenfuse.ledger.schema import connect
from tokenfuse.simulator.app import Simulator
from tokenfuse.simulator.server import SimulatorThread
from tokenfuse.simulator.state import SimConfig

SYSTEM = "You are a careful coding agent. Follow the repository's conventions and run the tests. " * 80
TOOL_OUTPUT = "ok  tests/test_module.py::test_case PASSED [ 42%] " * 24
MODEL = "claude-sonnet-4-5"


def loop(url: str, key: str, turns: int) -> None:
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Fix the failing test."}]
    for turn in range(turns):
        reply = client.messages.create(model=MODEL, max_tokens=64, system=SYSTEM, messages=messages)  # type: ignore[arg-type]
        messages.append({"role": "assistant", "content": [{"type": "text", "text": reply.content[0].text}]})  # type: ignore[union-attr]
        messages.append({"role": "user", "content": [{"type": "text", "text": f"turn {turn}: {TOOL_OUTPUT}"}]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--loops", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "ledger.db"
        app = Simulator(SimConfig(cache_rules="provider", output_tokens=64))
        with SimulatorThread(app=app) as sim:
            # alice's workflow (droid) is auto-cached; bob's (batch) is not. Same guards for both.
            config = make_config(sim.url, db, "caching: {auto: [{workflow: droid}]}")
            with GatewayThread(config) as gw:
                for _ in range(args.loops):
                    loop(gw.url, ALICE, args.turns)
                    loop(gw.url, BOB, args.turns)
                assert gw.gateway.ledger.flush(10)
        rows = connect(f"sqlite:///{db}").execute(
            "SELECT principal, overhead_ms, cache_read FROM requests WHERE outcome = 'ok'"
        ).fetchall()
    for who, label in (("alice", "auto-caching on"), ("bob", "auto-caching off")):
        ms = sorted(r[1] for r in rows if r[0] == who)
        reads = sum(r[2] for r in rows if r[0] == who)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        print(f"{label:17s} requests {len(ms):4d}  gateway overhead p50 {statistics.median(ms):.2f} ms  "
              f"p99 {p99:.2f} ms  mean {statistics.fmean(ms):.2f} ms  cache-read tokens {reads:,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
