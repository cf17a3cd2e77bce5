"""Issue 14: what each per-request step costs on turn N of a long agent loop, given turns 1..N-1 were seen.

    python bench/conversation_cost.py [--root PATH --label NAME]... [--turns 200] [--variants 40]
        [--rounds 5] [--profile] [--json FILE]

Builds an Anthropic Messages agent loop like the one tests/caching/test_e2e.py drives (a cached
system prompt, tools, and N messages of assistant text + tool_use and user tool_result, the
newest user message carrying the cache marker, as Claude Code sends it). Each round, in a fresh
process per code version: the gateway's per-request steps are fed turns 1..N-1 in order (so any
state they keep is warm), then timed on ``--variants`` different turn-N bodies (same history, a
new last message each, as the next step of different runs of the loop would send):

* ``parse``: ``protocols.anthropic.parse_request`` on the raw body;
* ``conversation key``: ``limits.prefix.conversation`` (the conversation-prefix key);
* ``bound + fit``: ``limits.fit.plan`` against a PrefixBounds holding turn N-1's exact input;
* ``turn print``: ``AutoCache.print_of`` (the cache doctor's fingerprint);
* ``guards observe``: ``Guards.observe`` with the default guards config, without the cache
  doctor guard (its turn print is the row above) and with it on a fresh request.

Then the same for a small OpenAI chat request (system + user message, ~400 bytes). CPU time is
``time.process_time`` over all variants of a step, per request; each figure is the median of
``--rounds`` rounds, the versions' rounds interleaved (A, B, A, B, ...). ``--root`` imports
``tokenfuse`` from another tree (e.g. ``git archive <commit> tokenfuse | tar -x -C /tmp/before``).
``--profile`` prints a cProfile of the steps on turn N for the first root instead. Not a test.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SYSTEM = "You are a careful coding agent. Follow the repository's conventions and run the tests. " * 80
TOOL_OUTPUT = "ok  tests/test_module.py::test_case PASSED [ 42%]\n" * 52  # ~2.6 kB per tool result
MODEL = "claude-sonnet-4-5"
TOOLS = [
    {
        "name": name,
        "description": f"{name.replace('_', ' ').capitalize()} in the working tree and return the output.",
        "input_schema": {
            "type": "object",
            "properties": {"path": {"type": "string", "description": "A path relative to the repository root."},
                           "args": {"type": "array", "items": {"type": "string"}}},
            "required": ["path"],
        },
    }
    for name in ("run_tests", "read_file", "write_file", "list_dir", "grep", "git_diff", "run_shell", "edit_file")
]


def _marked(message: dict[str, Any]) -> dict[str, Any]:
    blocks = [dict(b) for b in message["content"]]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return {**message, "content": blocks}


def history(turns: int) -> list[dict[str, Any]]:
    """``turns`` messages of an agent loop: the task, then (assistant tool_use, user tool_result) pairs."""
    out: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "Fix the failing test."}]}]
    step = 0
    while len(out) < turns:
        tid = f"toolu_{step:04d}_abcdefghijklmnop"
        out.append({"role": "assistant", "content": [
            {"type": "text", "text": f"Step {step}: running the tests again to see what fails now."},
            {"type": "tool_use", "id": tid, "name": "run_tests", "input": {"path": "tests/", "args": ["-q"]}},
        ]})
        out.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": tid, "content": f"step {step}\n{TOOL_OUTPUT}"},
        ]})
        step += 1
    return out[:turns]


def anthropic_body(messages: list[dict[str, Any]]) -> bytes:
    """The body Claude Code would send: cached system prompt, tools, the newest message marked."""
    body = {
        "model": MODEL,
        "max_tokens": 8192,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "tools": TOOLS,
        "messages": [*messages[:-1], _marked(messages[-1])],
    }
    return json.dumps(body).encode()


def turn_n_variants(base: list[dict[str, Any]], count: int, tag: str) -> list[bytes]:
    """Turn N bodies: the same N-1 messages, then a new last user message each."""
    return [
        anthropic_body([*base, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": f"toolu_new_{tag}_{j}", "content": f"{tag} {j}\n{TOOL_OUTPUT}"},
        ]}])
        for j in range(count)
    ]


def openai_bodies(count: int, tag: str) -> list[bytes]:
    return [
        json.dumps({
            "model": "gpt-4.1-mini",
            "max_tokens": 256,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": f"What is the capital of France? ({tag} {j})"},
            ],
        }).encode()
        for j in range(count)
    ]


# --- one round, in a fresh process --------------------------------------------------------------


def worker(root: str, turns: int, variants: int, tag: str, profile: bool) -> dict[str, float]:
    sys.path.insert(0, root)
    import tokenfuse
    from tokenfuse.caching.verify import AutoCache
    from tokenfuse.config import CachingConfig, GuardsConfig
    from tokenfuse.guards.base import Guards
    from tokenfuse.limits.context import RequestContext
    from tokenfuse.limits.fit import plan
    from tokenfuse.limits.prefix import PrefixBounds, conversation
    from tokenfuse.pricing.price import Price
    from tokenfuse.protocols import anthropic, openai
    from tokenfuse.usage import Usage

    assert Path(tokenfuse.__file__).resolve().is_relative_to(Path(root).resolve()), tokenfuse.__file__
    price = Price(MODEL, Decimal("3"), Decimal("15"), cache_read=Decimal("0.30"), cache_write=Decimal("3.75"),
                  cache_write_1h=Decimal("6"))
    ctx = RequestContext("alice-droid", "alice", "droid", "s1", MODEL, "anthropic")
    no_doctor = GuardsConfig.model_validate({"cache_doctor": {"enabled": False}})
    guards, guards_doctor = Guards(no_doctor, lambda f: None), Guards(GuardsConfig(), lambda f: None)
    caching = AutoCache(CachingConfig())
    prefixes = PrefixBounds()
    now = [1_000_000.0]

    def usage_of(raw: bytes, prev: int) -> Usage:
        total = len(raw) // 4
        return Usage(input_uncached=3, cache_read=min(prev, total), cache_write=max(0, total - prev), output=120)

    # Turns 1..N-1, in order, through every step: whatever state a step keeps is warm.
    messages = history(turns)
    prev_tokens = 0
    key = b""
    for t in range(1, turns):
        raw = anthropic_body(messages[:t])
        info = anthropic.parse_request("messages", raw)
        p = plan(info, price, prefixes=prefixes, scope="alice", floor=1024, lower=True)
        u = usage_of(raw, prev_tokens)
        if p.remember is not None:
            prefixes.record(p.remember, u)
        key = p.remember or b""
        caching.print_of(info)
        now[0] += 20
        guards.observe(ctx, info, raw, u, Decimal("0.05"), price, now[0])
        guards_doctor.observe(ctx, info, raw, u, Decimal("0.05"), price, now[0])
        prev_tokens = u.input_total
    del key
    bodies = turn_n_variants(messages[: turns - 1], variants, tag)
    small = openai_bodies(variants * 20, tag)
    sctx = RequestContext("bob-app", "bob", "app", None, "gpt-4.1-mini", "openai")
    sprice = Price("gpt-4.1-mini", Decimal("0.4"), Decimal("1.6"), cache_read=Decimal("0.1"))
    out: dict[str, float] = {"body_kB": len(bodies[0]) / 1000, "small_body_B": len(small[0])}

    def timed(name: str, n: int, fn: Callable[[], object]) -> None:
        # A collection the previous step's garbage makes due must not land in this step's time.
        gc.collect()
        start = time.process_time()
        fn()
        out[name] = (time.process_time() - start) / n * 1e6

    def steps() -> None:
        infos: list[Any] = []
        timed("long: parse", len(bodies), lambda: infos.extend(anthropic.parse_request("messages", b) for b in bodies))
        timed("long: conversation key", len(infos), lambda: [conversation(i, "alice") for i in infos])
        timed("long: bound + fit", len(infos), lambda: [
            plan(i, price, prefixes=prefixes, scope="alice", floor=1024, lower=True) for i in infos])
        timed("long: turn print", len(infos), lambda: [caching.print_of(i) for i in infos])
        u = usage_of(bodies[0], prev_tokens)

        def observe(g: Guards, batch: list[tuple[Any, bytes]]) -> None:
            for i, b in batch:
                now[0] += 20
                g.observe(ctx, i, b, u, Decimal("0.05"), price, now[0])

        # Fresh bytes objects, copied before the clock starts: hash(bytes) is cached on the object,
        # and a real request's body was never hashed before the guards see it.
        batch = [(i, bytes(bytearray(b))) for i, b in zip(infos, bodies, strict=True)]
        timed("long: guards observe (no doctor)", len(batch), lambda: observe(guards, batch))
        fresh = [(anthropic.parse_request("messages", b), bytes(bytearray(b))) for b in bodies]
        timed("long: guards observe (with doctor)", len(fresh), lambda: observe(guards_doctor, fresh))
        sinfos: list[Any] = []
        timed("small: parse", len(small),
              lambda: sinfos.extend(openai.parse_request("chat.completions", b) for b in small))
        timed("small: conversation key", len(sinfos), lambda: [conversation(i, "bob") for i in sinfos])
        timed("small: bound + fit", len(sinfos), lambda: [
            plan(i, sprice, prefixes=prefixes, scope="bob", floor=256, lower=True) for i in sinfos])
        su = Usage(input_uncached=40, output=12)
        sbatch = [(i, bytes(bytearray(b))) for i, b in zip(sinfos, small, strict=True)]
        timed("small: guards observe", len(sbatch), lambda: [
            guards_doctor.observe(sctx, i, b, su, Decimal("0.0001"), sprice, now[0] + k)
            for k, (i, b) in enumerate(sbatch)])

    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(steps)
        pstats.Stats(prof).sort_stats("tottime").print_stats(30)
    else:
        steps()
    return out


# --- the driver -------------------------------------------------------------------------------


STEPS = (
    "long: parse", "long: conversation key", "long: bound + fit", "long: turn print",
    "long: guards observe (no doctor)", "long: guards observe (with doctor)",
    "small: parse", "small: conversation key", "small: bound + fit", "small: guards observe",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", action="append", default=[], help="a tree holding tokenfuse/ (repeatable)")
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--variants", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="r0", help=argparse.SUPPRESS)
    args = parser.parse_args()
    roots = args.root or [str(HERE.parent)]
    if args.worker or args.profile:
        out = worker(roots[0], args.turns, args.variants, args.tag, args.profile)
        if not args.profile:
            print(json.dumps(out))
        return 0
    labels = args.label or [Path(r).name for r in roots]
    if len(labels) != len(roots):
        parser.error("give one --label per --root")
    runs: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for r in range(args.rounds):
        for root, label in zip(roots, labels, strict=True):
            cmd = [sys.executable, __file__, "--worker", "--root", root, "--turns", str(args.turns),
                   "--variants", str(args.variants), "--tag", f"r{r}"]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            runs[label].append(res)
            print(f"round {r + 1} {label}: " + ", ".join(f"{k.split(': ')[1]} {v:,.0f}" for k, v in res.items()
                                                           if k.startswith("long")), file=sys.stderr)
    first = runs[labels[0]][0]
    print(f"\nturn {args.turns} of an Anthropic agent loop ({first['body_kB']:.0f} kB body) and a small OpenAI "
          f"chat request ({first['small_body_B']:.0f} B); CPU µs per request, median of {args.rounds} rounds "
          "(min–max)\n")
    print("| step | " + " | ".join(labels) + (" | last / first |" if len(labels) > 1 else " |"))
    print("|---|" + "---:|" * len(labels) + ("---:|" if len(labels) > 1 else ""))
    for step in STEPS:
        cells, meds = [], []
        for label in labels:
            vals = [run[step] for run in runs[label]]
            med = statistics.median(vals)
            meds.append(med)
            cells.append(f"{med:,.1f} ({min(vals):,.0f}–{max(vals):,.0f})" if med < 100
                         else f"{med:,.0f} ({min(vals):,.0f}–{max(vals):,.0f})")
        ratio = f" | {meds[-1] / meds[0]:.2f}" if len(labels) > 1 and meds[0] else ""
        print(f"| {step} | " + " | ".join(cells) + ratio + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
