"""Issue 14: the gateway's CPU per request, latency under uniform, Poisson and bursty arrivals,
throughput with 1 and 2 worker processes — beside the direct path, in one run.

    python bench/gateway_cpu.py [--quick] [--root PATH --label NAME]... [--no-redis] [--no-workers]
        [--profile] [--nice -10]

``--root`` runs the gateway from another checkout (e.g. ``git worktree add
/tmp/before dd53450``) so one run compares commits on the same simulator, the
same load generators and the same minute of machine load; give one ``--label``
per ``--root``. Without ``--root`` the current checkout is measured.

Per code version it starts fresh gateways (CPU 0) against one simulator (CPU 1):

* CPU per request: ``wrk -t1 -c64`` at saturation; server process tree CPU
  (user + system, all threads, /proc/<pid>/stat) divided by requests answered.
  Non-stream and stream without budgets, and non-stream with one budget on
  memory counters and on Redis counters. Ledger (SQLite) and the default guards
  are on in every variant.
* latency: OpenAI non-stream, 16 connections, 200 and 500 requests/s, uniform,
  Poisson and bursty (10 at once) arrivals, the simulator directly and then the
  gateway for each cell; "added" is the difference per percentile.
* workers: saturation with ``server.workers`` 1 and 2 on Redis counters
  (workers > 1 refuse memory counters), without and with one budget, unpinned
  (both cores), against ``bench/fixed_upstream.py`` (a fixed answer at a fifth
  of the simulator's CPU) and beside that upstream's own figure.

See bench/README.md and docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import gateway_bench as gb
import gateway_stack as gs

HERE = Path(__file__).resolve().parent
RATES = (200.0, 500.0)
ARRIVALS = ("uniform", "poisson", "bursty")


def _supports_workers(root: Path) -> bool:
    return "workers" in (root / "tokenfuse" / "config.py").read_text()


def long_conversation() -> gs.Shape:
    """An agent loop's 100th turn: ~310 kB of Anthropic Messages with a cached system prompt."""
    turns = [{"role": "user" if i % 2 == 0 else "assistant",
              "content": [{"type": "text", "text": f"step {i}: " + "tool output and reasoning " * 58}]}
             for i in range(199)]
    body = {"model": "test-claude", "max_tokens": 64,
            "system": [{"type": "text", "text": "You are a coding agent. " * 200, "cache_control": {"type": "ephemeral"}}],
            "messages": turns}
    raw = json.dumps(body, separators=(",", ":")).encode()
    headers = {"content-type": "application/json", "x-api-key": gs.KEY, "anthropic-version": "2023-06-01"}
    return gs.Shape("anthropic-long", "/v1/messages", raw, headers, '"usage"')


def cpu_variants(b: gb.Bench, sim: gs.Proc, root: Path, tag: str, redis_ok: bool,
                 profile: bool) -> list[dict[str, Any]]:
    shapes = gs.shapes()
    rows: list[dict[str, Any]] = []
    variants = [("non-stream", "openai", "memory", 0), ("stream", "openai-stream", "memory", 0),
                ("non-stream, 1 budget, memory counters", "openai", "memory", 1)]
    if redis_ok:
        variants.append(("non-stream, 1 budget, Redis counters", "openai", gb.REDIS_URL, 1))
    shapes["anthropic-long"] = long_conversation()
    variants.append((f"Anthropic {len(shapes['anthropic-long'].body) // 1000} kB conversation, 1 budget, memory",
                     "anthropic-long", "memory", 1))
    for label, shape, counters, budgets in variants:
        db = b.workdir / f"{tag}-{shape}-{budgets}-{'redis' if counters != 'memory' else 'memory'}.db"
        gw = gs.start_gateway(gs.gateway_config(sim.url, db, counters, budgets), b.workdir,
                              f"{tag}-{len(rows)}", b.server_cpu, root)
        try:
            r = b.saturate(gw, shapes[shape])
            if profile:
                gb.stage_profile(b, gw, shapes[shape], f"{tag}: {label}")
        finally:
            gw.stop()
        r.update(variant=label, shape=shape)
        rows.append(r)
        gb.log(f"{tag} cpu {label}: {r['server_cpu_us_per_req']} us/req, {r['achieved_rps']} req/s")
        if counters != "memory":
            gb.redis_cleanup()
    return rows


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per variant: the round with the median CPU per request, plus the range over rounds."""
    out: list[dict[str, Any]] = []
    for i in range(len(rounds[0]) if rounds else 0):
        runs = sorted((r[i] for r in rounds), key=lambda x: x["server_cpu_us_per_req"] or 0.0)
        mid = dict(runs[len(runs) // 2])
        mid["cpu_range"] = (runs[0]["server_cpu_us_per_req"], runs[-1]["server_cpu_us_per_req"])
        mid["rounds"] = len(runs)
        out.append(mid)
    return out


def latency(b: gb.Bench, sim: gs.Proc, root: Path, tag: str) -> list[dict[str, Any]]:
    shape = gs.shapes()["openai"]
    db = b.workdir / f"{tag}-latency.db"
    gw = gs.start_gateway(gs.gateway_config(sim.url, db), b.workdir, f"{tag}-latency", b.server_cpu, root)
    rows = []
    try:
        for rate in RATES:
            for arrivals in ARRIVALS:
                row: dict[str, Any] = {"rate": rate, "arrivals": arrivals}
                row["direct"] = open_loop(b, sim.port, shape, 16, rate, arrivals)
                row["tokenfuse"] = open_loop(b, gw.port, shape, 16, rate, arrivals)
                rows.append(row)
                gb.log(f"{tag} latency {rate:.0f}/s {arrivals}: direct p50/p99 "
                       f"{row['direct']['p50_ms']}/{row['direct']['p99_ms']}, tokenfuse "
                       f"{row['tokenfuse']['p50_ms']}/{row['tokenfuse']['p99_ms']}")
    finally:
        gw.stop()
    return rows


def open_loop(b: gb.Bench, port: int, shape: gs.Shape, conns: int, rate: float, arrivals: str) -> dict[str, Any]:
    argv = [sys.executable, str(HERE / "gateway_load.py"), "--url", f"http://127.0.0.1:{port}{shape.path}",
            "--body-file", str(b.body_file(shape)), "--expect", shape.expect, "--conns", str(conns),
            "--duration", str(b.plan.duration), "--warmup", str(b.plan.warmup), "--rate", str(rate),
            "--arrivals", arrivals]
    for k, v in shape.headers.items():
        argv += ["--header", f"{k}:{v}"]
    import subprocess

    out = subprocess.run(gs.pinned(b.client_cpu, argv), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def start_fixed_upstream(workdir: Path) -> gs.Proc:
    """bench/fixed_upstream.py, unpinned: the cheapest upstream this machine can run (see its docstring)."""
    port = gs.free_port()
    log = workdir / "fixed-upstream.log"
    popen = gs._spawn("fixed-upstream", [gs.PY, str(HERE / "fixed_upstream.py"), "--port", str(port)], log)
    proc = gs.Proc("fixed-upstream", popen, port, log)
    gs.wait_ready(port, gs.shapes()["openai"], popen, 30.0, 0.02)
    return proc


def workers(b: gb.Bench, root: Path, tag: str) -> list[dict[str, Any]]:
    """1 vs 2 worker processes, unpinned (each may use either core), against the fixed-answer upstream.

    The simulator would take 50-100 µs of the same two cores per request; the fixed upstream takes
    about a fifth of that, which leaves the second core to the second worker as far as this machine
    allows. Without budgets (the counters are Redis but unused) and with one Redis budget.
    """
    shape = gs.shapes()["openai"]
    rows = []
    unpinned = gb.Bench(b.plan, b.workdir, pin=False)
    up = start_fixed_upstream(b.workdir)
    try:
        direct = unpinned.saturate(up, shape)
        direct.update(variant="fixed upstream (direct)", workers=0)
        rows.append(direct)
        gb.log(f"{tag} fixed upstream direct: {direct['achieved_rps']} req/s, "
               f"{direct['server_cpu_us_per_req']} us/req")
        for budgets in (0, 1):
            for n in (1, 2):
                db = b.workdir / f"{tag}-workers{n}-b{budgets}.db"
                cfg = gs.gateway_config(up.url, db, gb.REDIS_URL, budgets, server_extra=f", workers: {n}")
                gw = gs.start_gateway(cfg, b.workdir, f"{tag}-workers{n}-b{budgets}", None, root)
                try:
                    time.sleep(1.0)  # every worker bound and warm
                    r = unpinned.saturate(gw, shape)
                finally:
                    gw.stop()
                    gb.redis_cleanup()
                label = "no budget" if budgets == 0 else "1 budget, Redis counters"
                r.update(variant=label, workers=n)
                rows.append(r)
                gb.log(f"{tag} workers={n} {label}: {r['achieved_rps']} req/s, {r['server_cpu_us_per_req']} us/req")
    finally:
        up.stop()
    return rows


# Where the microseconds go, by layer. A sample belongs to the deepest tokenfuse module
# on its stack (so the stdlib JSON encoder under limits/prefix.py counts as "bound"),
# except gateway/app.py and the entry points, under which the library decides.
_TF_LAYERS = [
    ("gateway/server_limits.py", "ASGI server + HTTP parsing (uvicorn, httptools)"),
    ("gateway/httpclient.py", "upstream client (httpclient)"),
    ("gateway/identity.py", "auth (key digest, SigV4)"),
    ("gateway/headers.py", "header allowlist"),
    ("gateway/upstream.py", "upstream choice + auth headers"),
    ("gateway/reload.py", "runtime snapshot"),
    ("protocols/errors.py", "refusals"),
    ("protocols/", "protocol parse / encode / metering"),
    ("pricing/", "pricing"),
    ("limits/bounds.py", "bound + conversation prefix"),
    ("limits/fit.py", "bound + conversation prefix"),
    ("limits/prefix.py", "bound + conversation prefix"),
    ("limits/", "budget counters (limiter, memory/Redis)"),
    ("ledger/journal.py", "admission journal"),
    ("ledger/", "ledger (row + writer thread)"),
    ("ops/", "metrics"),
    ("guards/", "guards"),
    ("caching/", "cache doctor / auto-cache"),
]
_LIB_LAYERS = [
    ("(aiohttp/", "upstream client (aiohttp)"), ("(yarl/", "upstream client (aiohttp)"),
    ("(multidict/", "upstream client (aiohttp)"), ("(redis/", "budget counters (limiter, memory/Redis)"),
    ("(uvicorn/protocols/", "ASGI server + HTTP parsing (uvicorn, httptools)"), ("(logging/", "logging"),
    ("(json/", "JSON (stdlib)"), ("(sqlite3/", "ledger (row + writer thread)"),
]


def _layer(frames: list[str]) -> str:
    deepest_app = None
    for i in range(len(frames) - 1, -1, -1):
        f = frames[i]
        if "(tokenfuse/" in f:
            mod = f.split("(tokenfuse/", 1)[1]
            if mod.startswith(("gateway/app.py", "gateway/serve.py", "cli.py", "__main__.py", "aio.py")):
                deepest_app = i
                break
            return next((name for pat, name in _TF_LAYERS if mod.startswith(pat)), "tokenfuse, other")
    # Only library frames below the app's own frame (or anywhere, outside any request) decide.
    below = frames[deepest_app + 1:] if deepest_app is not None else frames
    for f in reversed(below):
        for pat, name in _LIB_LAYERS:
            if pat in f:
                return name
    if deepest_app is not None and deepest_app == len(frames) - 1:
        return "gateway/app.py own code"
    return "event loop, tasks, sockets (asyncio/uvloop)"


def layers(raw: str, cpu_us_per_req: float) -> list[tuple[str, float]]:
    from collections import Counter

    got: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        n = int(count_s)
        total += n
        got[_layer(stack.split(";"))] += n
    return [(k, round(v / total * cpu_us_per_req, 1)) for k, v in got.most_common()] if total else []


def render(res: dict[str, Any]) -> str:
    out = [f"Run {res['date']}, {res['machine']}.\n"]
    tags = list(res["versions"])
    out.append("#### CPU per request at saturation (wrk -t1 -c64; ledger and default guards on; median of "
               "interleaved rounds, range in brackets)\n")
    out.append("| variant | " + " | ".join(f"{t} CPU µs/req | {t} req/s" for t in tags) + " |")
    out.append("|---|" + "---:|---:|" * len(tags))
    sim = res.get("direct", [])
    for r in sim:
        out.append(f"| simulator (direct), {r['shape']} | " + " | ".join(
            f"{r['server_cpu_us_per_req']:.0f} | {r['achieved_rps']:,.0f}" for _ in tags) + " |")
    first = res["versions"][tags[0]]["cpu"]
    for i, r in enumerate(first):  # empty with --rounds 0
        cells = []
        for t in tags:
            rows = res["versions"][t]["cpu"]
            x = rows[i] if i < len(rows) else None
            rng = x.get("cpu_range") if x else None
            spread = f" ({rng[0]:.0f}–{rng[1]:.0f})" if rng and x and x.get("rounds", 1) > 1 else ""
            cells.append(f"{x['server_cpu_us_per_req']:.0f}{spread} | {x['achieved_rps']:,.0f}" if x else "– | –")
        out.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("#### Added latency, OpenAI non-stream, 16 connections (ms; tokenfuse minus direct, same arrivals)\n")
    out.append("| req/s | arrivals | direct p50 / p99 | " + " | ".join(
        f"{t} p50 / p99 | {t} **added** p50 / p99" for t in tags) + " |")
    out.append("|---:|---|---:|" + "---:|---:|" * len(tags))
    lat0 = res["versions"][tags[0]].get("latency", [])
    for i, r in enumerate(lat0):
        d = r["direct"]
        cells = []
        for t in tags:
            x = res["versions"][t]["latency"][i]
            cells.append(f"{gb._lat(x['tokenfuse'])} | **{gb._diff(x['tokenfuse'], x['direct'])}**")
        out.append(f"| {r['rate']:.0f} | {r['arrivals']} | {gb._lat(d)} | " + " | ".join(cells) + " |")
    out.append("")
    for t in tags:
        w = res["versions"][t].get("workers")
        if not w:
            continue
        out.append(f"#### {t}: worker processes (fixed-answer upstream, unpinned, wrk -t1 -c64)\n")
        out.append("| variant | workers | req/s | × 1 worker | p50 ms | p99 ms | CPU µs/req | errors |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        one: dict[str, float] = {}
        for r in w:
            if r["workers"] == 1:
                one[r["variant"]] = r["achieved_rps"]
            base = one.get(r["variant"])
            ratio = f"{r['achieved_rps'] / base:.2f}" if base and r["workers"] else ""
            out.append(f"| {r['variant']} | {r['workers'] or '–'} | {r['achieved_rps']:,.0f} | {ratio} | "
                       f"{gb._f(r['p50_ms'])} | {gb._f(r['p99_ms'])} | {gb._f(r['server_cpu_us_per_req'], 0)} | "
                       f"{r['errors']} |")
        out.append("")
    for prof in res.get("profiles", []):
        if "skipped" in prof:
            out.append(f"Profile {prof['label']} skipped: {prof['skipped']}\n")
            continue
        out.append(f"#### Profile: {prof['label']} ({prof['samples']} samples, {prof['cpu_us_per_req']} CPU µs/req)\n")
        out.append("| layer | µs/req |")
        out.append("|---|---:|")
        out += [f"| {name} | {us} |" for name, us in layers(Path(prof["raw"]).read_text(), prof["cpu_us_per_req"])]
        out.append("")
        out.append("| self time by package/file | µs/req |")
        out.append("|---|---:|")
        out += [f"| {x['name']} | {x['us_per_req']} |" for x in prof["self_packages"][:12]]
        out.append("")
        out.append("| tokenfuse function (inclusive) | µs/req |")
        out.append("|---|---:|")
        fns = [x for x in prof["tokenfuse_inclusive"] if not x["name"].startswith(gb._BORING)]
        out += [f"| `{x['name']}` | {x['us_per_req']} |" for x in fns[:16]]
        out.append("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--root", action="append", default=[], help="checkout to run the gateway from (repeatable)")
    p.add_argument("--label", action="append", default=[], help="a name per --root")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--no-workers", action="store_true")
    p.add_argument("--no-latency", action="store_true")
    p.add_argument("--profile", action="store_true", help="py-spy each CPU variant in the first round (slower)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved CPU rounds per checkout (median shown; 0 skips the CPU cells)")
    p.add_argument("--nice", type=int, default=0)
    args = p.parse_args(argv)
    roots = [Path(r).resolve() for r in args.root] or [gs.ROOT]
    labels = args.label or ([r.name for r in roots] if args.root else ["current"])
    if len(labels) != len(roots):
        p.error("give one --label per --root")
    if args.nice:
        os.nice(args.nice)
    plan = gb.Plan(duration=3.0 if args.quick else 5.0, warmup=1.0, sat_duration=4.0 if args.quick else 8.0,
                   startups=0, profile_s=8, cells=[])
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "results" / f"gateway-cpu-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    b = gb.Bench(plan, workdir, pin)
    redis_ok = not args.no_redis and gb.redis_reachable()
    res: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/gateway_cpu.py " + " ".join(argv),
        "machine": f"{os.cpu_count()} CPUs ({gb._cpu_model()}), pinning "
                   f"{'gateway CPU 0, simulator + load CPU 1' if pin else 'none'}, load average before "
                   f"{gb._loadavg()}, commit {gb._commit()}",
        "versions": {},
    }
    sim = gs.start_simulator(workdir, b.client_cpu)
    try:
        res["direct"] = []
        for shape in ("openai", "openai-stream"):
            r = b.saturate(sim, gs.shapes()[shape])
            r["shape"] = shape
            res["direct"].append(r)
            gb.log(f"direct {shape}: {r['server_cpu_us_per_req']} us/req")
        # CPU rounds interleave the checkouts, so a change in the machine's other load
        # hits every one alike; the table shows the median (and range) per variant.
        rounds: dict[str, list[list[dict[str, Any]]]] = {tag: [] for tag in labels}
        for r in range(args.rounds):
            for root, tag in zip(roots, labels, strict=True):
                rounds[tag].append(cpu_variants(b, sim, root, tag, redis_ok, args.profile and r == 0))
        for root, tag in zip(roots, labels, strict=True):
            v: dict[str, Any] = {"root": str(root), "cpu_rounds": rounds[tag], "cpu": median_rows(rounds[tag])}
            if not args.no_latency:
                v["latency"] = latency(b, sim, root, tag)
            if not args.no_workers and redis_ok and _supports_workers(root):
                v["workers"] = workers(b, root, tag)
            res["versions"][tag] = v
        res["profiles"] = b.results.get("profiles", [])
    finally:
        sim.stop()
    res["machine"] += f"; load average after {gb._loadavg()}"
    (workdir / "results.json").write_text(json.dumps(res, indent=2))
    text = render(res)
    (workdir / "results.md").write_text(text)
    print(text)
    gb.log(f"raw results in {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
