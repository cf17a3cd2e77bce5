"""Issue 14: CPU of the stream meters alone, per stream and per text event, for each protocol.

    python bench/stream_meters.py [--root PATH --label NAME]... [--iterations 1000] [--rounds 5]
        [--profile CASE] [--json FILE]

Streams come from the project's simulator (one per case, 64 and 256 output tokens: 20 and 68
events for OpenAI chat), captured once so that every version meters the same bytes:

* ``chat, gateway usage``: Chat Completions where the gateway asked for include_usage on the
  client's behalf, so the meter strips the usage chunk and every ``"usage":null``;
* ``chat, client usage``: the client asked for it, every byte passes;
* ``responses``, ``anthropic``: Responses and Messages streams (``event:`` lines);
* ``converse``, ``invoke``: Bedrock ConverseStream and InvokeModelWithResponseStream
  (AWS event stream; invoke carries base64 Anthropic events).

Each is fed one event per chunk, as upstreams send them (``StreamMeter.feed`` per event, then
``finish`` and ``usage``). CPU time is ``time.process_time`` over ``--iterations`` streams; a
stream's figure is µs per 64-token stream, a text event's is the difference between the 256- and
64-token streams divided by the events between them (what each further delta costs). Medians
of ``--rounds`` rounds, the versions' rounds interleaved in fresh processes. ``--root`` imports
``tokenfuse`` from another tree (e.g. ``git archive <commit> tokenfuse | tar -x -C /tmp/before``).
Not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pickle
import pstats
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CASES = ("chat, gateway usage", "chat, client usage", "responses", "anthropic", "converse", "invoke")
_MESSAGES = [{"role": "user", "content": "hello " * 50}]


def capture(output_tokens: int) -> dict[str, tuple[str, str, bytes, str | None, list[bytes]]]:
    """(protocol, route, request body, model, the stream's events) per case, from the simulator."""
    sys.path.insert(0, str(HERE.parent))
    from tokenfuse.simulator.app import Simulator
    from tokenfuse.simulator.server import SimulatorThread
    from tokenfuse.simulator.state import SimConfig

    def post(url: str, body: dict[str, Any], **headers: str) -> bytes:
        req = urllib.request.Request(
            url, data=json.dumps(body).encode(),
            headers={"content-type": "application/json", "authorization": "Bearer x", **headers},
        )
        with urllib.request.urlopen(req) as resp:
            data: bytes = resp.read()
        return data

    chat = {"model": "test-model", "max_tokens": 512, "stream": True, "messages": _MESSAGES}
    with_usage = dict(chat, stream_options={"include_usage": True})
    responses = {"model": "test-model", "max_output_tokens": 512, "stream": True, "input": "hello " * 50}
    messages = {"model": "claude-test", "max_tokens": 512, "stream": True, "messages": _MESSAGES}
    converse = {"messages": [{"role": "user", "content": [{"text": "hello " * 50}]}],
                "inferenceConfig": {"maxTokens": 512}}
    invoke = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 512, "messages": _MESSAGES}
    model = "anthropic.claude-test"
    with SimulatorThread(app=Simulator(SimConfig(output_tokens=output_tokens))) as sim:
        u = sim.url
        raw = {
            "chat, gateway usage": ("openai", "chat.completions", chat, None,
                                    post(u + "/v1/chat/completions", with_usage)),
            "chat, client usage": ("openai", "chat.completions", with_usage, None,
                                   post(u + "/v1/chat/completions", with_usage)),
            "responses": ("openai", "responses", responses, None, post(u + "/v1/responses", responses)),
            "anthropic": ("anthropic", "messages", messages, None,
                          post(u + "/v1/messages", messages, **{"anthropic-version": "2023-06-01"})),
            "converse": ("bedrock", "converse_stream", converse, model,
                         post(f"{u}/model/{model}/converse-stream", converse)),
            "invoke": ("bedrock", "invoke_stream", invoke, model,
                       post(f"{u}/model/{model}/invoke-with-response-stream", invoke)),
        }
    return {k: (p, r, json.dumps(b).encode(), m, _events(p, s)) for k, (p, r, b, m, s) in raw.items()}


def _events(protocol: str, stream: bytes) -> list[bytes]:
    if protocol != "bedrock":
        parts = stream.split(b"\n\n")
        return [p + b"\n\n" for p in parts[:-1]]
    out, i = [], 0
    while i < len(stream):
        (n,) = struct.unpack_from("!I", stream, i)
        out.append(stream[i : i + n])
        i += n
    return out


def _runner(root: str, case: tuple[str, str, bytes, str | None, list[bytes]], gateway_usage: bool) -> Any:
    import importlib

    protocol, route, body, model, events = case
    mod = importlib.import_module(f"tokenfuse.protocols.{protocol}")
    assert Path(mod.__file__).resolve().is_relative_to(Path(root).resolve()), mod.__file__
    info = mod.parse_request(route, body, model)
    if gateway_usage:
        mod.request_usage_in_stream(info)  # the client did not ask: the meter strips it

    def run() -> None:
        meter = mod.StreamMeter(info)
        for e in events:
            meter.feed(e)
        meter.finish()
        meter.usage(True)

    return run


def worker(root: str, streams: Path, iterations: int, profile: str | None) -> dict[str, float]:
    sys.path.insert(0, root)
    short, long = pickle.loads(streams.read_bytes())
    out: dict[str, float] = {}
    for name in CASES:
        if profile is not None and name != profile:
            continue
        strip = name == "chat, gateway usage"
        run_short = _runner(root, short[name], strip)
        run_long = _runner(root, long[name], strip)
        if profile is not None:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(iterations):
                run_short()
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
            continue
        times = []
        for run in (run_short, run_long):
            run()
            t0 = time.process_time()
            for _ in range(iterations):
                run()
            times.append((time.process_time() - t0) / iterations * 1e6)
        extra = len(long[name][4]) - len(short[name][4])
        out[f"{name}: stream"] = times[0]
        out[f"{name}: event"] = (times[1] - times[0]) / extra
        out[f"{name}: events"] = len(short[name][4])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", action="append", default=[], help="a tree holding tokenfuse/ (repeatable)")
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", choices=CASES, help="cProfile one case of the first root instead")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    roots = args.root or [str(HERE.parent)]
    if args.worker is not None:
        print(json.dumps(worker(roots[0], args.worker, args.iterations, None)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        streams = Path(tmp) / "streams.pickle"
        streams.write_bytes(pickle.dumps((capture(64), capture(256))))
        if args.profile:
            worker(roots[0], streams, args.iterations, args.profile)
            return 0
        labels = args.label or [Path(r).name for r in roots]
        if len(labels) != len(roots):
            parser.error("give one --label per --root")
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
        for r in range(args.rounds):
            for root, label in zip(roots, labels, strict=True):
                cmd = [sys.executable, __file__, "--worker", str(streams), "--root", root,
                       "--iterations", str(args.iterations)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                runs[label].append(res)
                print(f"round {r + 1} {label}: " + ", ".join(
                    f"{c} {res[c + ': stream']:.0f}" for c in CASES), file=sys.stderr)
    print(f"\nCPU µs of the stream meter alone, one event per chunk; median of {args.rounds} rounds\n")
    head = " | ".join(f"{label} stream | {label} event" for label in labels)
    ratio = " | stream, first / last | event, first / last" if len(labels) > 1 else ""
    print(f"| case (events) | {head}{ratio} |")
    print("|---|" + "---:|---:|" * len(labels) + ("---:|---:|" if len(labels) > 1 else ""))
    for case in CASES:
        cells, stream_meds, event_meds = [], [], []
        for label in labels:
            s = statistics.median(run[f"{case}: stream"] for run in runs[label])
            e = statistics.median(run[f"{case}: event"] for run in runs[label])
            stream_meds.append(s)
            event_meds.append(e)
            cells.append(f"{s:.0f} | {e:.2f}")
        extra = ""
        if len(labels) > 1:
            extra = f" | {stream_meds[0] / stream_meds[-1]:.2f}× | {event_meds[0] / event_meds[-1]:.2f}×"
        n = int(runs[labels[0]][0][f"{case}: events"])
        print(f"| {case} ({n}) | " + " | ".join(cells) + extra + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
