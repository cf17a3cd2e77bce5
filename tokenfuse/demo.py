"""`tokenfuse demo`: the simulator and the gateway on loopback, an agent session per
protocol driven through the official SDKs, and what each session cost.

Everything runs locally against the bundled provider simulator; nothing is
fetched and no provider account is needed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any

DEMO_CONFIG = """
server: {{host: 127.0.0.1, port: 0, admin_token: demo-admin, log_level: warning}}
store: sqlite:///{db}
counters: memory
kill_poll_ms: 100
ledger: {{batch_interval_ms: 50}}
upstreams:
  - {{name: openai, protocol: openai, base_url: "{sim}/v1", api_key: sk-demo}}
  - {{name: anthropic, protocol: anthropic, base_url: "{sim}", api_key: demo}}
  - {{name: bedrock, protocol: bedrock, base_url: "{sim}", region: us-east-1, auth: none}}
keys:
  - {{name: coder, key: tf-demo-coder, principal: alice, workflow: coding-agent,
     aws_access_key_id: AKIADEMOCODER0000001, aws_secret_access_key: demo-secret-key}}
budgets:
  - {{name: alice-daily, match: {{principal: alice}}, window: day, limit: {{usd: 5}}}}
  - {{name: agent-uncached-hourly, match: {{workflow: coding-agent}}, window: hour,
     limit: {{tokens: {{input_uncached: 2000000}}}}}}
defaults: {{max_tokens: 1024, max_tokens_cap: 8192}}
sessions: {{max_requests: 6, max_usd: 2}}
# Demo-sized thresholds so the guards speak up within a few small requests.
guards: {{cache_miss: {{min_usd: 0.001, min_prefix_tokens: 256}}}}
"""

def _agent_turns() -> list[str]:
    return [
        "Read the failing test and explain the error.",
        "Propose a fix for the off-by-one in the pager.",
        "Write the patch.",
        "Run the tests again and summarise.",
        "Update the changelog.",
        "Open the pull request description.",
        "One more iteration, please.",
    ]


# Printed at the end: the demo's shape against real providers, for a user to save and edit.
STARTER_CONFIG = """\
# tokenfuse.yaml - save, export the variables it names, then: tokenfuse serve --config tokenfuse.yaml
server: {host: 127.0.0.1, port: 8787, admin_token: ${TF_ADMIN_TOKEN}}
store: sqlite:///tokenfuse.db
upstreams:
  - {name: openai, protocol: openai, base_url: https://api.openai.com/v1, api_key: ${OPENAI_API_KEY}}
  - {name: anthropic, protocol: anthropic, base_url: https://api.anthropic.com, api_key: ${ANTHROPIC_API_KEY}}
keys:
  # Each caller gets its own key; more can be added at run time with `tokenfuse keys create`.
  - {name: alice-agent, key: ${TF_KEY_ALICE}, principal: alice, workflow: coding-agent, team: platform}
budgets:
  - {name: platform-daily, match: {team: platform}, window: day, limit: {usd: 50}}
  - {name: alice-monthly, match: {principal: alice}, window: month, limit: {usd: 200}}
sessions: {max_requests: 200, max_usd: 10}
defaults: {max_tokens: 4096, max_tokens_cap: 32000}
"""


def run(out: Any = sys.stdout, keep_db: str | None = None) -> int:
    # The demo prints the guards' findings itself; their JSON log lines would interleave.
    logger = logging.getLogger("tokenfuse")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        return _run(out, keep_db)
    finally:
        logger.setLevel(level)


def _run(out: Any, keep_db: str | None) -> int:
    # Everything the demo writes goes here and is removed at the end, whatever happens.
    with tempfile.TemporaryDirectory(prefix="tokenfuse-demo-") as tmp:
        code = _session(out, Path(keep_db) if keep_db else Path(tmp) / "ledger.db")
    if keep_db:
        cfg = Path(keep_db).with_suffix(".yaml")
        cfg.write_text(f"# The demo's ledger, for tokenfuse usage\nstore: sqlite:///{Path(keep_db).resolve()}\n")
        print(f"\nThe demo ledger is kept: tokenfuse usage --config {cfg} --by principal", file=out)
    print("\nTo meter your own agents, start from this config:\n", file=out)
    print(STARTER_CONFIG, file=out)
    return code


def _session(out: Any, db: Path) -> int:
    import anthropic
    import boto3
    import openai
    from botocore.config import Config as BotoConfig

    from tokenfuse.config import parse_config
    from tokenfuse.gateway.runner import GatewayThread
    from tokenfuse.ledger.query import usage_totals
    from tokenfuse.simulator.server import SimulatorThread

    store = f"sqlite:///{db}"
    history = "You are a coding agent working in a large repository. " * 60  # a system prompt worth caching
    with SimulatorThread() as sim:
        config = parse_config(DEMO_CONFIG.format(db=db, sim=sim.url), "demo-config")
        with GatewayThread(config) as gw:
            print(f"simulator on {sim.url}, gateway on {gw.url}, ledger {db}\n", file=out)
            oai = openai.OpenAI(
                base_url=f"{gw.url}/v1", api_key="tf-demo-coder", max_retries=0,
                default_headers={"x-tokenfuse-session": "openai-agent"},
            )
            ant = anthropic.Anthropic(
                base_url=gw.url, api_key="tf-demo-coder", max_retries=0,
                default_headers={"x-tokenfuse-session": "anthropic-agent"},
            )
            # The same agent with caching silently off (no cache_control marker): the
            # $37,901 incident in miniature, for the cache-miss guard to catch.
            ant_nocache = anthropic.Anthropic(
                base_url=gw.url, api_key="tf-demo-coder", max_retries=0,
                default_headers={"x-tokenfuse-session": "uncached-agent"},
            )
            brt = boto3.client(
                "bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                aws_access_key_id="AKIADEMOCODER0000001", aws_secret_access_key="demo-secret-key",
                config=BotoConfig(retries={"max_attempts": 1}),
            )

            def tag(request: Any, **_: Any) -> None:
                request.headers["x-tokenfuse-session"] = "bedrock-agent"

            brt.meta.events.register("before-sign.bedrock-runtime.*", tag)
            convo: list[dict[str, str]] = []  # the agent re-sends its whole history every step
            for step, turn in enumerate(_agent_turns(), 1):
                if convo:
                    convo.append({"role": "assistant", "content": f"Done with step {step - 1}."})
                convo.append({"role": "user", "content": turn})
                bedrock_convo = [{"role": m["role"], "content": [{"text": m["content"]}]} for m in convo]
                results = []
                try:
                    stream = oai.chat.completions.create(
                        model="gpt-4o-mini", stream=True, max_tokens=200,
                        messages=[{"role": "system", "content": history}, *convo],  # type: ignore[list-item]
                    )
                    results.append("openai:" + str(sum(1 for _ in stream)) + " chunks")
                except openai.APIStatusError as exc:
                    results.append(f"openai: refused ({exc.status_code})")
                try:
                    msg = ant.messages.create(
                        model="claude-sonnet-4-6", max_tokens=200,
                        system=[{"type": "text", "text": history, "cache_control": {"type": "ephemeral"}}],
                        messages=convo,  # type: ignore[arg-type]
                    )
                    results.append(f"anthropic: cache_read={msg.usage.cache_read_input_tokens}")
                except anthropic.APIStatusError as exc:
                    results.append(f"anthropic: refused ({exc.status_code})")
                try:
                    nc = ant_nocache.messages.create(
                        model="claude-sonnet-4-6", max_tokens=200, system=history,
                        messages=convo,  # type: ignore[arg-type]
                    )
                    results.append(f"uncached: cache_read={nc.usage.cache_read_input_tokens or 0}")
                except anthropic.APIStatusError as exc:
                    results.append(f"uncached: refused ({exc.status_code})")
                try:
                    conv = brt.converse(
                        modelId="us.anthropic.claude-haiku-4-5-20251001-v1:0",
                        system=[{"text": history}, {"cachePoint": {"type": "default"}}],
                        messages=bedrock_convo,
                        inferenceConfig={"maxTokens": 200},
                    )
                    results.append(f"bedrock: out={conv['usage']['outputTokens']}")
                except brt.exceptions.ClientError as exc:
                    results.append(f"bedrock: refused ({exc.response['Error']['Code']})")
                print(f"step {step}: " + ", ".join(results), file=out)
            last_refusal = ""
            try:
                oai.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "again"}]
                )
            except openai.APIStatusError as exc:
                last_refusal = str(exc.message)
            gw.gateway.ledger.flush(10.0)
            print("\nWhat each agent session cost (from the ledger):", file=out)
            print(f"{'session':<18}{'requests':>9}{'uncached in':>13}{'cache read':>12}{'cache write':>13}"
                  f"{'output':>9}{'cost USD':>13}", file=out)
            grand = Decimal(0)
            for session in ("openai-agent", "anthropic-agent", "uncached-agent", "bedrock-agent"):
                t = usage_totals(store, session=session)
                agg = {k: sum(m[k] for m in t["by_model"].values())
                       for k in ("input_uncached", "cache_read", "cache_write", "output")}
                grand += Decimal(t["cost_usd"])
                print(f"{session:<18}{t['requests']:>9}{agg['input_uncached']:>13}{agg['cache_read']:>12}"
                      f"{agg['cache_write']:>13}{agg['output']:>9}{t['cost_usd']:>13}", file=out)
            print(f"{'total':<18}{'':>9}{'':>13}{'':>12}{'':>13}{'':>9}{grand!s:>13}", file=out)
            findings = gw.gateway.guards.recent() if gw.gateway.guards is not None else []
            if findings:
                print("\nLive guards noticed:", file=out)
                for f in findings:
                    print(f"  {f['text']}", file=out)
            if last_refusal:
                print(f"\nThe session cap stopped the loop; the agent was told:\n  {last_refusal}", file=out)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tokenfuse demo", description=__doc__)
    parser.add_argument("--keep-ledger", metavar="PATH", help="write the demo ledger here instead of a temp dir")
    args = parser.parse_args(argv)
    return run(keep_db=args.keep_ledger)
