"""Issue 14: the same gateway app under different ASGI servers, CPU per request side by side.

    python bench/asgi_servers.py [--rounds 3] [--seconds 8] [--nice -10]

Candidates, each serving the same ``Gateway`` with the same config (SQLite
ledger, default guards, no budgets) against ``bench/fixed_upstream.py``:

* ``tokenfuse serve``: uvicorn with the gateway's own protocol subclass
  (``gateway/server_limits.py``: header/body timeouts, connection caps, one
  write per whole response);
* ``uvicorn stock``: uvicorn's own httptools protocol, none of those limits;
* ``granian``: granian's ASGI interface, one worker, one runtime thread, uvloop
  (if granian is installed; it is not a dependency).

Each server is pinned to CPU 0, the upstream and ``wrk -t1 -c64`` to CPU 1.
CPU per request is the server's process tree (all threads, user + system)
divided by the answers counted by wrk; rounds interleave the servers. Needs
``wrk`` and ``taskset``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from statistics import median
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import gateway_bench as gb
import gateway_cpu as gc
import gateway_stack as gs

HERE = Path(__file__).resolve().parent

# The app for servers that import one by name: the config comes from the environment.
APP_MODULE = '''
import os
from tokenfuse.config import load_config
from tokenfuse.gateway.app import Gateway
app = Gateway(load_config(os.environ["TOKENFUSE_BENCH_CONFIG"]))
'''


def candidates(cfg: Path, port: int) -> dict[str, list[str]]:
    out = {
        "tokenfuse serve (uvicorn + server_limits)": [
            gs.PY, "-m", "tokenfuse", "serve", "--config", str(cfg), "--port", str(port)],
        "uvicorn stock httptools protocol": [
            gs.PY, "-m", "uvicorn", "bench_gateway_app:app", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--no-access-log", "--log-level", "warning", "--lifespan", "on"],
    }
    if shutil.which("granian"):
        out["granian (ASGI, 1 worker, 1 runtime thread, uvloop)"] = [
            "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--runtime-threads", "1", "--loop", "uvloop", "--http", "1", "--log-level", "warning",
            "--no-ws", "bench_gateway_app:app"]
    return out


def run_one(b: gb.Bench, name: str, argv: list[str], port: int, cfg: Path, workdir: Path) -> dict[str, Any]:
    env = {**os.environ, "TOKENFUSE_BENCH_CONFIG": str(cfg),
           "PYTHONPATH": os.pathsep.join([str(workdir), str(gs.ROOT), os.environ.get("PYTHONPATH", "")])}
    log = workdir / f"server-{abs(hash(name))}.log"
    popen = subprocess.Popen(gs.pinned(gb.SERVER_CPU, argv), stdout=log.open("wb"), stderr=subprocess.STDOUT,
                             env=env, cwd=workdir)
    proc = gs.Proc(name, popen, port, log)
    try:
        gs.wait_ready(port, gs.shapes()["openai"], popen, 30.0, 0.02)
        time.sleep(0.5)
        r = b.saturate(proc, gs.shapes()["openai"])
    finally:
        proc.stop()
    return r


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--nice", type=int, default=0)
    args = p.parse_args(argv)
    if not shutil.which("wrk"):
        print("asgi_servers: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.nice:
        os.nice(args.nice)
    workdir = HERE / "results" / f"asgi-servers-{time.strftime('%Y%m%dT%H%M%S')}"
    workdir.mkdir(parents=True)
    (workdir / "bench_gateway_app.py").write_text(APP_MODULE)
    plan = gb.Plan(duration=5.0, warmup=1.0, sat_duration=args.seconds, startups=0, profile_s=8, cells=[])
    b = gb.Bench(plan, workdir, pin=True)
    up = gc.start_fixed_upstream(workdir)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for r in range(args.rounds):
            port = gs.free_port()
            db = workdir / f"ledger-{r}.db"
            cfg = workdir / f"gateway-{r}.yaml"
            cfg.write_text(gs.gateway_config(up.url, db).replace("port: 0", f"port: {port}"))
            for name, cmd in candidates(cfg, port).items():
                res = run_one(b, name, cmd, port, cfg, workdir)
                results.setdefault(name, []).append(res)
                gb.log(f"round {r + 1} {name}: {res['server_cpu_us_per_req']} us/req, {res['achieved_rps']} req/s, "
                       f"{res['errors']} errors")
    finally:
        up.stop()
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average {gb._loadavg()}; "
          f"median of {args.rounds} interleaved rounds (range)\n")
    print("| server | CPU µs/req | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, rs in results.items():
        cpu = sorted(x["server_cpu_us_per_req"] for x in rs)
        mid = sorted(rs, key=lambda x: x["server_cpu_us_per_req"])[len(rs) // 2]
        print(f"| {name} | {median(cpu):.0f} ({cpu[0]:.0f}–{cpu[-1]:.0f}) | {mid['achieved_rps']:,.0f} | "
              f"{gb._f(mid['p50_ms'])} | {gb._f(mid['p99_ms'])} | {sum(x['errors'] for x in rs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
