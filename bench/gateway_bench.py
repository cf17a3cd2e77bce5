"""Gateway benchmark: added latency over the simulator, saturation throughput,
memory, start-up time, budget-counter overhead, LiteLLM side by side, and a
py-spy profile. Prints markdown tables; raw results go to bench/results/.

    python bench/gateway_bench.py [--quick] [--no-litellm] [--no-redis] [--no-profile] [--no-pin]

See bench/README.md for the method and docs/benchmarks.md for numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import gateway_stack as gs

HERE = Path(__file__).resolve().parent
SERVER_CPU = "0"  # the gateway (or LiteLLM) alone on one core
CLIENT_CPU = "1"  # simulator + load generator on the other
REDIS_URL = "redis://127.0.0.1:6379/11"  # a database of its own, emptied of tokenfuse keys after the run


@dataclass
class Plan:
    duration: float
    warmup: float
    sat_duration: float
    startups: int
    profile_s: int
    cells: list[tuple[int, float | None]]  # (connections, offered requests/s or None: back to back)


FULL = Plan(duration=5.0, warmup=1.0, sat_duration=10.0, startups=3, profile_s=10,
            cells=[(1, None), (1, 100.0), (16, 500.0), (64, 500.0)])
QUICK = Plan(duration=2.0, warmup=0.5, sat_duration=4.0, startups=1, profile_s=4,
             cells=[(1, None), (1, 100.0), (16, 500.0), (64, 500.0)])


@dataclass
class Bench:
    plan: Plan
    workdir: Path
    pin: bool
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def client_cpu(self) -> str | None:
        return CLIENT_CPU if self.pin else None

    @property
    def server_cpu(self) -> str | None:
        return SERVER_CPU if self.pin else None

    def body_file(self, shape: gs.Shape) -> Path:
        path = self.workdir / f"body-{shape.name}.json"
        path.write_bytes(shape.body)
        return path

    def open_loop(
        self, port: int, shape: gs.Shape, conns: int, rate: float | None, seconds: float | None = None
    ) -> dict[str, Any]:
        argv = [sys.executable, str(HERE / "gateway_load.py"), "--url", f"http://127.0.0.1:{port}{shape.path}",
                "--body-file", str(self.body_file(shape)), "--expect", shape.expect, "--conns", str(conns),
                "--duration", str(seconds or self.plan.duration),
                "--warmup", str(self.plan.warmup)]
        argv += ["--rate", str(rate)] if rate else ["--closed"]
        for k, v in shape.headers.items():
            argv += ["--header", f"{k}:{v}"]
        out = subprocess.run(gs.pinned(self.client_cpu, argv), capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def saturate(self, proc: gs.Proc, shape: gs.Shape, conns: int = 64) -> dict[str, Any]:
        """Closed loop with wrk if installed (cheap on the client core), else the Python generator."""
        pid = proc.popen.pid
        with gs.RssSampler(pid) as rss:
            cpu0 = cpu_seconds(pid)
            if shutil.which("wrk"):
                # Warm the connection pools first; wrk has no warm-up of its own.
                self.run_wrk(proc.port, shape, conns, self.plan.warmup)
                cpu0 = cpu_seconds(pid)
                result = self.run_wrk(proc.port, shape, conns, self.plan.sat_duration)
            else:
                result = self.open_loop(proc.port, shape, conns, None, self.plan.sat_duration)
                result["tool"] = "python closed loop"
            cpu1 = cpu_seconds(pid)
        done = result["ok"] + result["errors"]
        result["server_cpu_us_per_req"] = round((cpu1 - cpu0) * 1e6 / done, 1) if done else None
        result["peak_rss_mib"] = round(rss.peak_mib, 1)
        return result

    def run_wrk(self, port: int, shape: gs.Shape, conns: int, seconds: float) -> dict[str, Any]:
        script = self.workdir / f"wrk-{shape.name}.lua"
        headers = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in shape.headers.items())
        script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{shape.body.decode()}]==]\n{headers}')
        argv = ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency",
                "-s", str(script), f"http://127.0.0.1:{port}{shape.path}"]
        out = subprocess.run(gs.pinned(self.client_cpu, argv), capture_output=True, text=True, check=False)
        return parse_wrk(out.stdout + out.stderr)


def parse_wrk(text: str) -> dict[str, Any]:
    def ms(value: str) -> float:
        m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
        if m is None:
            return float("nan")
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[m[2]]
        return float(m[1]) * scale

    pct = {p: ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M)}
    total = re.search(r"(\d+) requests in ([\d.]+)(s|m)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = (int(non2xx[1]) if non2xx else 0) + (sum(int(x) for x in sock.groups()) if sock else 0)
    n = int(total[1]) if total else 0
    if not rps:
        raise RuntimeError(f"wrk printed no result: {text[-500:]}")
    return {"tool": "wrk", "ok": n - errors, "errors": errors, "achieved_rps": float(rps[1]),
            "p50_ms": pct.get("50"), "p90_ms": pct.get("90"), "p99_ms": pct.get("99")}


def wait_idle(pid: int, busy_below: float = 0.05, limit_s: float = 60.0) -> float:
    """Seconds until the process tree uses less than ``busy_below`` of a CPU over half a second."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        c0 = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - c0 < busy_below * 0.5:
            break
    return round(time.monotonic() - t0, 1)


def ledger_overhead(db: Path, run: dict[str, Any]) -> dict[str, float] | None:
    """The gateway's own view: overhead_ms (its time minus the upstream's) of the run's ledger rows."""
    time.sleep(0.5)  # rows are committed every batch_interval_ms (200 ms)
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            vals = sorted(v for (v,) in conn.execute(
                "SELECT overhead_ms FROM requests WHERE ts >= ? AND ts <= ? AND outcome = 'ok'",
                (run["epoch_start"], run["epoch_end"] + 0.05)))
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    if not vals:
        return None

    def pick(q: float) -> float:
        return round(float(vals[min(len(vals) - 1, round(q * (len(vals) - 1)))]), 3)

    return {"rows": len(vals), "p50_ms": pick(0.5), "p99_ms": pick(0.99)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree so far (all threads), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in gs._tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / tick


# -- the stages -------------------------------------------------------------------------


def stage_startup(b: Bench, sim: gs.Proc) -> None:
    rows = []
    for i in range(b.plan.startups):
        db = b.workdir / f"startup-{i}.db"
        gw = gs.start_gateway(gs.gateway_config(sim.url, db), b.workdir, f"startup-{i}", b.server_cpu)
        rows.append({"ready_s": round(gw.ready_s, 3), "cpu_s_at_ready": round(cpu_seconds(gw.popen.pid), 3)})
        gw.stop()
    b.results["startup"] = rows
    log(f"start-up: {rows}")


def stage_latency(b: Bench, sim: gs.Proc, gw: gs.Proc, lite: gs.Proc | None, db: Path) -> None:
    shapes = gs.shapes()
    rows = []
    matrix = [(s, c, r) for s in ("openai", "openai-stream") for c, r in b.plan.cells]
    matrix += [(s, c, r) for s in ("anthropic", "bedrock") for c, r in b.plan.cells[1:3]]
    for name, conns, rate in matrix:
        shape = shapes[name]
        row: dict[str, Any] = {"shape": name, "conns": conns, "rate": rate}
        # Interleaved per cell, so drift in the machine's other load hits all three alike.
        row["direct"] = b.open_loop(sim.port, shape, conns, rate)
        row["tokenfuse"] = b.open_loop(gw.port, shape, conns, rate)
        row["tokenfuse_ledger"] = ledger_overhead(db, row["tokenfuse"])
        if lite is not None and name.startswith("openai"):
            row["litellm"] = b.open_loop(lite.port, shape, conns, rate)
            # LiteLLM keeps working off the backlog of a rate it cannot carry after the client gave
            # up; it shares the gateway's core, so the next cell must wait until it is idle.
            row["litellm"]["drain_s"] = wait_idle(lite.popen.pid)
        rows.append(row)
        log(f"latency {name} c={conns} {rate or 'back-to-back'}: direct p50 {row['direct']['p50_ms']} ms, "
            f"tokenfuse p50 {row['tokenfuse']['p50_ms']} ms"
            + (f", litellm p50 {row['litellm']['p50_ms']} ms" if "litellm" in row else ""))
    b.results["latency"] = rows


def stage_saturation(b: Bench, sim: gs.Proc, gw: gs.Proc, lite: gs.Proc | None, profile: bool) -> None:
    shapes = gs.shapes()
    rows = []
    targets: list[tuple[str, gs.Proc, str]] = [("simulator (direct)", sim, "openai"),
                                               ("simulator (direct)", sim, "openai-stream"),
                                               ("tokenfuse", gw, "openai"), ("tokenfuse", gw, "openai-stream")]
    if lite is not None:
        targets += [("LiteLLM proxy", lite, "openai"), ("LiteLLM proxy", lite, "openai-stream")]
    for label, proc, shape in targets:
        r = b.saturate(proc, shapes[shape])
        r.update(target=label, shape=shape)
        rows.append(r)
        log(f"saturation {label} {shape}: {r['achieved_rps']} req/s, {r['server_cpu_us_per_req']} CPU us/req, "
            f"peak RSS {r['peak_rss_mib']} MiB, errors {r['errors']}")
        wait_idle(proc.popen.pid)
    b.results["saturation"] = rows
    if lite is not None and profile:
        stage_profile(b, lite, shapes["openai"], "LiteLLM proxy, OpenAI non-stream (for comparison)")


def stage_budgets(b: Bench, sim: gs.Proc, redis_ok: bool, profile: bool) -> None:
    shape = gs.shapes()["openai"]
    variants = [("none", "memory", 0), ("memory", "memory", 5)]
    if redis_ok:
        variants.append(("redis", REDIS_URL, 5))
    rows = []
    for label, counters, budgets in variants:
        db = b.workdir / f"budgets-{label}.db"
        gw = gs.start_gateway(gs.gateway_config(sim.url, db, counters, budgets), b.workdir, f"budgets-{label}",
                              b.server_cpu)
        try:
            lat = b.open_loop(gw.port, shape, 16, 500.0)
            row: dict[str, Any] = {"counters": label, "budgets": budgets, "open": lat,
                                   "ledger": ledger_overhead(db, lat)}
            row["saturation"] = b.saturate(gw, shape)
            if profile and budgets:
                stage_profile(b, gw, shape, f"OpenAI non-stream, {label} counters, 5 budgets")
        finally:
            gw.stop()
        rows.append(row)
        log(f"budgets {label}x{budgets}: p50 {lat['p50_ms']} ms p99 {lat['p99_ms']} ms, "
            f"max {row['saturation']['achieved_rps']} req/s")
    b.results["budgets"] = rows


def stage_profile(b: Bench, gw: gs.Proc, shape: gs.Shape, label: str) -> None:
    profiles = b.results.setdefault("profiles", [])
    if shutil.which("py-spy") is None:
        profiles.append({"label": label, "skipped": "py-spy is not installed"})
        return
    raw = b.workdir / f"profile-{len(profiles)}.txt"
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(gw.popen.pid), "--duration", str(b.plan.profile_s),
                            "--rate", "200", "--gil", "--format", "raw", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    cpu0 = cpu_seconds(gw.popen.pid)
    load = b.run_wrk(gw.port, shape, 64, b.plan.profile_s - 1) if shutil.which("wrk") else \
        b.open_loop(gw.port, shape, 64, None, b.plan.profile_s - 1)
    cpu1 = cpu_seconds(gw.popen.pid)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0:
        profiles.append({"label": label, "skipped": f"py-spy failed: {err.decode().strip()[-300:]}"})
        return
    done = load["ok"] + load["errors"]
    summary = summarise_profile(raw.read_text(), (cpu1 - cpu0) * 1e6 / max(done, 1))
    summary.update(label=label, raw=str(raw), rps=load["achieved_rps"])
    profiles.append(summary)
    log(f"profile {label}: {summary['samples']} samples, {summary['cpu_us_per_req']} CPU us/req")


_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.+?)(?::\d+)?\)$")


def _category(file: str, func: str) -> str:
    f = file.replace("\\", "/")
    if "tokenfuse/" in f:
        part = f.split("tokenfuse/", 1)[1]
        return "tokenfuse/" + part.split("/")[0] + ("/" + part.split("/")[1] if part.count("/") else "")
    for pkg in ("aiohttp", "uvicorn", "httptools", "uvloop", "yarl", "multidict", "sqlite3", "json", "asyncio",
                "decimal", "logging", "pydantic", "botocore", "redis"):
        if f"/{pkg}/" in f or f.endswith(f"/{pkg}.py") or f.startswith(f"<{pkg}"):
            return pkg
    return f.rsplit("/", 1)[-1]


def summarise_profile(raw: str, cpu_us_per_req: float) -> dict[str, Any]:
    """Self time by function and by package, inclusive time of tokenfuse functions; µs/request."""
    self_fn: Counter[str] = Counter()
    self_cat: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]
        if not frames:
            continue
        total += count
        parsed = [_FRAME.match(f) for f in frames]
        names = [f"{m['func']} ({m['file'].rsplit('/', 1)[-1]})" if m else f for m, f in zip(parsed, frames,
                                                                                           strict=True)]
        self_fn[names[-1]] += count
        leaf = parsed[-1]
        self_cat[_category(leaf["file"], leaf["func"]) if leaf else names[-1]] += count
        seen: set[str] = set()
        for m, name in zip(parsed, names, strict=True):
            if m and "tokenfuse/" in m["file"] and name not in seen:
                seen.add(name)
                incl[name] += count

    def top(c: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"name": k, "share": round(v / total, 4), "us_per_req": round(v / total * cpu_us_per_req, 1)}
                for k, v in c.most_common(n)] if total else []

    return {"samples": total, "cpu_us_per_req": round(cpu_us_per_req, 1), "self_functions": top(self_fn, 20),
            "self_packages": top(self_cat, 15), "tokenfuse_inclusive": top(incl, 20)}


# -- output -------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _f(x: Any, nd: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def _flag(r: dict[str, Any]) -> str:
    # Open loop: an answer rate well under the offered rate means the target saturated.
    notes = []
    if r.get("offered_rps") and r["achieved_rps"] < 0.95 * r["offered_rps"]:
        notes.append(f"saturated: {r['achieved_rps']:.0f}/s")
    if r.get("errors"):
        notes.append(f"{r['errors']} errors ({r.get('first_error', '')[:60]})")
    return "; ".join(notes)


def _lat(r: dict[str, Any] | None) -> str:
    return f"{_f(r['p50_ms'])} / {_f(r['p99_ms'])}" if r else "–"


def _diff(a: dict[str, Any] | None, d: dict[str, Any]) -> str:
    return f"{_f(a['p50_ms'] - d['p50_ms'])} / {_f(a['p99_ms'] - d['p99_ms'])}" if a else "–"


_BORING = ("<module> (", "main (cli.py)", "main (serve.py)", "run (", "_run_once (", "_run (events.py)")


def render(res: dict[str, Any]) -> str:
    out: list[str] = []
    m = res["machine"]
    out.append(f"Run {res['date']} on {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}; pinning: {m['pinning']}; "
               f"nice {m.get('nice', 0)}; load average before {m['load_before']}, after {m.get('load_after', '?')}; "
               f"commit {m.get('commit', '?')}"
               + (f" at the start, {m['commit_after']} at the end (servers started later may have run newer code)"
                  if _tree(m.get("commit_after", "")) not in ("", _tree(m.get("commit", ""))) else "")
               + ".\n")
    if "latency" in res:
        out.append("### Added latency (ms; latency = the whole answer, for streams the whole stream)\n")
        out.append("| request | conns | offered req/s | direct p50 / p99 | tokenfuse p50 / p99 | **added p50 / p99** "
                   "| in-gateway (ledger) p50 / p99 | LiteLLM p50 / p99 | LiteLLM added p50 / p99 | notes |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in res["latency"]:
            d, t, lite = r["direct"], r["tokenfuse"], r.get("litellm")
            notes = "; ".join(f"{who}: {n}" for who, n in (("direct", _flag(d)), ("tokenfuse", _flag(t)),
                                                           ("LiteLLM", _flag(lite) if lite else "")) if n)
            rate = f"{r['rate']:.0f}" if r["rate"] else "back to back"
            out.append(f"| {r['shape']} | {r['conns']} | {rate} | {_lat(d)} | {_lat(t)} | **{_diff(t, d)}** | "
                       f"{_lat(r.get('tokenfuse_ledger'))} | {_lat(lite)} | {_diff(lite, d)} | {notes} |")
        out.append("")
    if "saturation" in res:
        out.append("### Saturation, closed loop (64 connections)\n")
        out.append("| target | request | req/s | p50 ms | p99 ms | errors | server CPU µs/req | "
                   "⇒ req/s per free core | peak RSS MiB |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["saturation"]:
            cpu = r.get("server_cpu_us_per_req")
            per_core = f"{1e6 / cpu:,.0f}" if cpu else "–"
            out.append(f"| {r['target']} | {r['shape']} | {r['achieved_rps']:,.0f} | {_f(r['p50_ms'])} | "
                       f"{_f(r['p99_ms'])} | {r['errors']} | {_f(cpu, 0)} | {per_core} | {_f(r['peak_rss_mib'], 0)} |")
        out.append("")
    if "budgets" in res:
        out.append("### Budget counters (5 budgets matching every request), OpenAI non-stream, 500 req/s on 16 conns\n")
        out.append("| counters | budgets | p50 / p99 ms | vs none p50 / p99 | in-gateway (ledger) p50 / p99 | "
                   "max req/s | CPU µs/req | notes |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---|")
        base = res["budgets"][0]["open"]
        for r in res["budgets"]:
            o, s = r["open"], r["saturation"]
            out.append(f"| {r['counters']} | {r['budgets']} | {_lat(o)} | {_diff(o, base)} | {_lat(r.get('ledger'))} | "
                       f"{s['achieved_rps']:,.0f} | {_f(s.get('server_cpu_us_per_req'), 0)} | {_flag(o)} |")
        out.append("")
    if "startup" in res:
        st = res["startup"]
        out.append("### `tokenfuse serve` start-up (exec to first 200 on a chat completion)\n")
        out.append("| run | wall s | CPU s used by then |")
        out.append("|---:|---:|---:|")
        for i, r in enumerate(st, 1):
            out.append(f"| {i} | {r['ready_s']:.3f} | {r['cpu_s_at_ready']:.3f} |")
        out.append("")
    for prof in res.get("profiles", []):
        if "skipped" in prof:
            out.append(f"Profile {prof['label']} skipped: {prof['skipped']}\n")
            continue
        out.append(f"### Profile: {prof['label']} (py-spy, {prof['samples']} samples at {prof['rps']:,.0f} req/s, "
                   f"{prof['cpu_us_per_req']} CPU µs/request)\n")
        out.append("| self time by package/file | share | µs/req |")
        out.append("|---|---:|---:|")
        out += [f"| {x['name']} | {x['share']:.1%} | {x['us_per_req']} |" for x in prof["self_packages"][:10]]
        out.append("")
        fns = [x for x in prof["tokenfuse_inclusive"] if not x["name"].startswith(_BORING)]
        what = "tokenfuse function (inclusive)"
        if not fns:
            fns, what = prof["self_functions"], "function (self)"
        out.append(f"| {what} | share | µs/req |")
        out.append("|---|---:|---:|")
        out += [f"| `{x['name']}` | {x['share']:.1%} | {x['us_per_req']} |" for x in fns[:14]]
        out.append("")
    out.append(render_targets(res))
    return "\n".join(out)


def render_targets(res: dict[str, Any]) -> str:
    rows: list[tuple[str, str, bool | None]] = []
    lat = res.get("latency", [])

    def cell(shape: str, conns: int) -> dict[str, Any] | None:
        return next((r for r in lat if r["shape"] == shape and r["conns"] == conns and r["rate"]), None)

    for c1 in (r for r in lat if r["shape"] == "openai" and r["conns"] == 1):
        add = c1["tokenfuse"]["p50_ms"] - c1["direct"]["p50_ms"]
        how = f"{c1['rate']:.0f} req/s" if c1["rate"] else "back to back"
        rows.append((f"added p50 ≤ 0.5 ms at concurrency 1 ({how})", f"{add:.2f} ms", add <= 0.5))
    for conns in (16, 64):
        c = cell("openai", conns)
        if c and c["rate"] == 500.0:
            a50 = c["tokenfuse"]["p50_ms"] - c["direct"]["p50_ms"]
            a99 = c["tokenfuse"]["p99_ms"] - c["direct"]["p99_ms"]
            rows.append((f"at 500 req/s ({conns} conns): added p50 ≤ 1 ms", f"{a50:.2f} ms", a50 <= 1.0))
            rows.append((f"at 500 req/s ({conns} conns): added p99 ≤ 5 ms", f"{a99:.2f} ms", a99 <= 5.0))
    sat = [r for r in res.get("saturation", []) if r["target"] == "tokenfuse" and r["shape"] == "openai"]
    if sat:
        rows.append(("≥ 1,500 req/s at saturation", f"{sat[0]['achieved_rps']:,.0f} req/s",
                     sat[0]["achieved_rps"] >= 1500))
        rows.append(("RSS ≤ 120 MiB under that load", f"{sat[0]['peak_rss_mib']:.0f} MiB",
                     sat[0]["peak_rss_mib"] <= 120))
    if res.get("startup"):
        best = min(r["ready_s"] for r in res["startup"])
        rows.append(("`tokenfuse serve` ready ≤ 1 s", f"{best:.2f} s (best of {len(res['startup'])})", best <= 1.0))
    bud = {r["counters"]: r for r in res.get("budgets", [])}
    if "redis" in bud and "none" in bud:
        d = bud["redis"]["open"]["p50_ms"] - bud["none"]["open"]["p50_ms"]
        rows.append(("Redis counters add ≤ 1 ms p50 at concurrency 16", f"{d:.2f} ms", d <= 1.0))
    out = ["### Targets\n", "| target | measured | met |", "|---|---:|---|"]
    out += [f"| {t} | {m} | {'yes' if ok else 'NO'} |" for t, m, ok in rows]
    return "\n".join(out) + "\n"


def redis_reachable() -> bool:
    try:
        import redis

        r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        r.ping()
        r.close()
        return True
    except Exception:
        return False


def redis_cleanup() -> None:
    import redis

    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match="tokenfuse*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (about 2 minutes), for a smoke check")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis counters variant")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    parser.add_argument("--nice", type=int, default=0,
                        help="run every process of the bench at this niceness (e.g. -10 as root on a shared machine)")
    parser.add_argument("--only", choices=["startup", "latency", "saturation", "budgets", "profile"], action="append",
                        help="run only these stages (repeatable)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.nice:
        os.nice(args.nice)  # inherited by every child: simulator, gateway, LiteLLM, load generators
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = HERE / "results" / f"gateway-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    pin = not args.no_pin and shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    b = Bench(plan, workdir, pin)
    stages = set(args.only or ["startup", "latency", "saturation", "budgets", "profile"])
    b.results["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    b.results["command"] = "python bench/gateway_bench.py " + " ".join(argv)
    b.results["machine"] = {
        "nproc": os.cpu_count(), "python": platform.python_version(), "cpu": _cpu_model(),
        "pinning": f"gateway/LiteLLM on CPU {SERVER_CPU}, simulator + load generator on CPU {CLIENT_CPU}" if pin
        else "none", "load_before": _loadavg(), "nice": args.nice, "commit": _commit(),
    }
    sim = gs.start_simulator(workdir, b.client_cpu)
    gw = lite = None
    try:
        if "startup" in stages:
            stage_startup(b, sim)
        base_db = workdir / "ledger.db"
        gw = gs.start_gateway(gs.gateway_config(sim.url, base_db), workdir, "base", b.server_cpu)
        if not args.no_litellm and stages & {"latency", "saturation"}:
            try:
                lite = gs.start_litellm(sim.url, workdir, b.server_cpu)
                log(f"LiteLLM proxy ready in {lite.ready_s:.1f} s")
                b.results["litellm_ready_s"] = round(lite.ready_s, 2)
            except RuntimeError as exc:
                b.results["litellm_error"] = str(exc)
                log(f"LiteLLM skipped: {exc}")
        if "latency" in stages:
            stage_latency(b, sim, gw, lite, base_db)
        if "saturation" in stages:
            stage_saturation(b, sim, gw, lite, "profile" in stages and not args.no_profile)
        if lite is not None:
            lite.stop()
            lite = None
        if "profile" in stages and not args.no_profile:
            for name in ("openai", "openai-stream"):
                stage_profile(b, gw, gs.shapes()[name], f"{name}, no budgets")
        gw.stop()
        gw = None
        if "budgets" in stages:
            redis_ok = not args.no_redis and redis_reachable()
            if not redis_ok and not args.no_redis:
                b.results["redis_error"] = f"{REDIS_URL} is unreachable"
            try:
                stage_budgets(b, sim, redis_ok, "profile" in stages and not args.no_profile)
            finally:
                if redis_ok:
                    redis_cleanup()
    finally:
        for p in (lite, gw, sim):
            if p is not None:
                p.stop()
    b.results["machine"]["load_after"] = _loadavg()
    b.results["machine"]["commit_after"] = _commit()
    (workdir / "results.json").write_text(json.dumps(b.results, indent=2))
    text = render(b.results)
    (workdir / "results.md").write_text(text)
    print(text)
    if "litellm_error" in b.results:
        print(f"LiteLLM: {b.results['litellm_error']}")
    log(f"raw results in {workdir}")
    return 0


def _commit() -> str:
    """HEAD, plus a mark when tokenfuse/ has uncommitted changes: the code every server ran."""
    def git(*a: str) -> str:
        out = subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    tree = git("rev-parse", "--short", "HEAD:tokenfuse") or "unknown"
    dirty = " + uncommitted changes" if git("status", "--porcelain", "--", "tokenfuse") else ""
    return f"{head} (tokenfuse/ tree {tree}{dirty})"


def _tree(commit: str) -> str:
    return commit.partition("(")[2]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
