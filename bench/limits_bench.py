"""What enforcing budgets costs a request, and how close to a cap real workloads get.

    python bench/limits_bench.py [--ops 20000] [--redis redis://127.0.0.1:6379/15] [--skip-redis] [--upstream-ms 20]
    python bench/limits_bench.py --cpu [--ops 20000] [--rounds 3] [--profile redis]

``--cpu`` (issue 14): CPU per request of budget enforcement, shaped like the
gateway: every request is its own task that reserves, lets its "response" go
(the client then sends its next request) and settles afterwards, on uvloop as
``tokenfuse serve`` runs. Reported: process CPU (time.process_time, all
threads) per request with no budget, one budget and five budgets, on memory and
Redis counters, at 1 and 32 clients, in interleaved rounds (medians). The
Redis server's own CPU is not included (it is another process, as in
bench/gateway_cpu.py). ``--profile redis`` prints a cProfile of one Redis run.

Part 1, latency: one reserve + settle pair per request, with 5 budgets matching
every request (principal/month USD, model glob/day requests, workflow/hour
tokens, key/week USD, total USD), on the memory and the Redis backend, at
concurrency 1 and 16 (that many asyncio tasks in one process, each issuing
its next request when the previous one is settled). A run with no budgets is
the baseline. Reported: p50 / p99 microseconds per pair and pairs per second.

Part 2, admitted spend / cap: clients send realistic requests (bounds from
`compute_bound` with real prices, actual usage drawn below the bound the way
real traffic falls) until the cap refuses them; reported is the settled spend
as a fraction of the cap, i.e. how much of a budget the upper bounds waste.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokenfuse.config import Config
from tokenfuse.limits.bounds import Bound, compute_bound
from tokenfuse.limits.context import RequestContext
from tokenfuse.limits.limiter import Limiter
from tokenfuse.pricing.price import Price
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.usage import Usage

FIVE = [
    {"name": "p-month", "match": {"principal": "alice"}, "window": "month", "limit": {"usd": 10**6}},
    {"name": "m-day", "match": {"model": "*sonnet*"}, "window": "day", "limit": {"requests": 10**9}},
    {
        "name": "w-hour",
        "match": {"workflow": "droid"},
        "window": "hour",
        "limit": {"tokens": {"total": 10**12}},
    },
    {"name": "k-week", "match": {"key": "alice-droid"}, "window": "week", "limit": {"usd": 10**6}},
    {"name": "all", "window": "total", "limit": {"usd": 10**6}},
]
CTX = RequestContext("alice-droid", "alice", "droid", None, "claude-sonnet-4-5", "anthropic")
SONNET = Price(
    "claude-sonnet-4-5",
    input=Decimal("3"),
    output=Decimal("15"),
    cache_read=Decimal("0.30"),
    cache_write=Decimal("3.75"),
    cache_write_1h=Decimal("6"),
)
BOUND = Bound(
    Decimal("0.05"),
    {"input_uncached": 4000, "cache_read": 4000, "cache_write": 4000, "output": 1024, "total": 5024},
)
USAGE = Usage(input_uncached=900, cache_read=2000, output=300)
COST = SONNET.cost(USAGE)


def config(budgets: list[dict[str, Any]], counters: str, store: str) -> Config:
    return Config.model_validate({"budgets": budgets, "counters": counters, "store": store})


async def latency(lim: Limiter, ops: int, concurrency: int, upstream_s: float) -> tuple[float, float, float]:
    """p50 and p99 µs of reserve + settle (the upstream wait excluded), and pairs per second."""
    samples: list[int] = []
    per_task = ops // concurrency
    rng = random.Random(1)

    async def worker() -> None:
        for _ in range(per_task):
            t0 = time.perf_counter_ns()
            adm = await lim.reserve(CTX, BOUND)
            t1 = time.perf_counter_ns()
            if upstream_s:
                # Jittered, so the tasks do not all wake at once.
                await asyncio.sleep(upstream_s * rng.uniform(0.5, 1.5))
            t2 = time.perf_counter_ns()
            await lim.settle(adm, USAGE, COST)
            samples.append(t1 - t0 + time.perf_counter_ns() - t2)

    for _ in range(200):  # warm-up: scripts loaded, pool filled, caches primed
        adm = await lim.reserve(CTX, BOUND)
        await lim.settle(adm, USAGE, COST)
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(samples, n=100)
    return q[49] / 1000, q[98] / 1000, len(samples) / elapsed


def workload(rng: random.Random, kind: str) -> tuple[RequestInfo, Usage]:
    """A request as the gateway sees it, and what the provider then bills."""
    if kind == "chat":
        prompt_bytes = rng.randint(2_000, 40_000)
        max_tokens = 4096
        output = rng.randint(150, 1500)
        cached = 0.0
    elif kind == "agent":
        prompt_bytes = rng.randint(40_000, 200_000)
        max_tokens = 1024
        output = rng.randint(100, 1024)
        cached = 0.85
    else:  # batch summaries with a tight max_tokens
        prompt_bytes = rng.randint(8_000, 16_000)
        max_tokens = 512
        output = rng.randint(300, 512)
        cached = 0.0
    # English text and JSON run at about 3.5 to 4.5 UTF-8 bytes per token.
    in_tokens = int(prompt_bytes / rng.uniform(3.5, 4.5))
    read = int(in_tokens * cached)
    write = int((in_tokens - read) * 0.2) if cached else 0
    info = RequestInfo(
        "anthropic", "messages", SONNET.model, False, max_tokens, prompt_bytes, bool(cached), False, {}
    )
    return info, Usage(
        input_uncached=in_tokens - read - write, cache_read=read, cache_write=write, output=output
    )


async def headroom(store: str, kind: str, cap: Decimal, concurrency: int = 16) -> tuple[Decimal, int, int]:
    lim = await Limiter.create(
        config([{"name": "cap", "window": "day", "limit": {"usd": str(cap)}}], "memory", store), rebuild=False
    )
    rng = random.Random(42)
    spent = Decimal(0)
    admitted = refused = 0

    async def client() -> None:
        nonlocal spent, admitted, refused
        misses = 0
        while misses < 20:
            info, usage = workload(rng, kind)
            adm = await lim.reserve(CTX, compute_bound(info, SONNET))
            if not adm.ok:
                refused += 1
                misses += 1
                await asyncio.sleep(0)
                continue
            await asyncio.sleep(rng.random() / 1000)  # the upstream call
            cost = SONNET.cost(usage)
            spent += cost
            admitted += 1
            await lim.settle(adm, usage, cost)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    await lim.close()
    return spent / cap, admitted, refused


async def cpu_per_request(lim: Limiter, ops: int, clients: int) -> float:
    """Process CPU µs per request: reserve, response, settle, each request its own task."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def request(answered: asyncio.Future[None]) -> None:
        adm = await lim.reserve(CTX, BOUND)
        answered.set_result(None)  # the gateway answers before it settles
        await lim.settle(adm, USAGE, COST)

    async def client(n: int) -> None:
        for _ in range(n):
            answered: asyncio.Future[None] = loop.create_future()
            task = loop.create_task(request(answered))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await answered

    await asyncio.gather(*(client(50) for _ in range(clients)))  # warm-up
    while tasks:
        await asyncio.gather(*list(tasks))
    per = ops // clients
    c0 = time.process_time()
    await asyncio.gather(*(client(per) for _ in range(clients)))
    while tasks:
        await asyncio.gather(*list(tasks))
    return (time.process_time() - c0) / (per * clients) * 1e6


def cpu_main(args: argparse.Namespace) -> int:
    import logging

    import uvloop

    logging.getLogger("tokenfuse.limits").setLevel(logging.ERROR)  # each fresh prefix is "seeded"

    tmp = tempfile.mkdtemp()
    store = f"sqlite:///{tmp}/bench.db"
    one = [{"name": "one", "match": {"principal": "alice"}, "window": "day", "limit": {"usd": 10**6}}]
    cells = [
        (label, counters, name, budgets, clients)
        for clients in (1, 32)
        for name, budgets in (("0", []), ("1", one), ("5", FIVE))
        for label, counters in (("memory", "memory"), ("redis", args.redis))
        if not (name == "0" and label == "redis")
    ]
    results: dict[tuple[str, str, int], list[float]] = {}

    async def run(label: str, counters: str, budgets: list[dict[str, Any]], clients: int, prof: bool) -> float:
        prefix = f"tfbench:{uuid.uuid4().hex[:8]}"
        lim = await Limiter.create(config(budgets, counters, store), prefix=prefix, seed_grace_s=0.0)
        try:
            if prof:
                import cProfile
                import pstats

                pr = cProfile.Profile()
                pr.enable()
                us = await cpu_per_request(lim, args.ops, clients)
                pr.disable()
                pstats.Stats(pr).sort_stats("tottime").print_stats(35)
                return us
            return await cpu_per_request(lim, args.ops, clients)
        finally:
            if label == "redis":
                from tokenfuse.limits.redis import RedisCounters

                backend = lim._backend
                assert isinstance(backend, RedisCounters)
                await backend.flush_prefix()
            await lim.close()

    if args.profile:
        uvloop.run(run("redis", args.redis, one if args.profile == "redis" else FIVE, 32, True))
        return 0
    for _ in range(args.rounds):
        for label, counters, name, budgets, clients in cells:
            us = uvloop.run(run(label, counters, budgets, clients, False))
            results.setdefault((label, name, clients), []).append(us)
    print("| clients | budgets | memory µs/request | Redis µs/request | Redis − memory | Redis / memory |")
    print("|---:|---:|---:|---:|---:|---:|")
    for clients in (1, 32):
        base = statistics.median(results[("memory", "0", clients)])
        print(f"| {clients} | 0 | {base:.0f} | | | |")
        for name in ("1", "5"):
            mem = statistics.median(results[("memory", name, clients)])
            red = statistics.median(results[("redis", name, clients)])
            print(f"| {clients} | {name} | {mem:.0f} | {red:.0f} | {red - mem:.0f} | {red / mem:.2f} |")
    return 0


def cli() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=20_000)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--skip-redis", action="store_true")
    ap.add_argument("--upstream-ms", type=float, default=20.0, help="simulated upstream time per request")
    ap.add_argument("--cpu", action="store_true", help="CPU per request, gateway-shaped (issue 14)")
    ap.add_argument("--rounds", type=int, default=3, help="--cpu: interleaved rounds (medians reported)")
    ap.add_argument("--profile", choices=("redis", "redis5"), help="--cpu: cProfile one Redis run instead")
    args = ap.parse_args()
    if args.cpu:
        return cpu_main(args)
    return asyncio.run(main(args))


async def main(args: argparse.Namespace) -> int:
    tmp = tempfile.mkdtemp()
    store = f"sqlite:///{tmp}/bench.db"

    # (concurrency, simulated upstream seconds): closed loop at 1 and 16, and 16
    # requests in flight that each wait for an upstream, as in a gateway.
    shapes = [(1, 0.0), (16, 0.0), (16, args.upstream_ms / 1000)]
    print("| counters | budgets | concurrency | upstream ms | p50 µs | p99 µs | pairs/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    backends = [("memory", "memory")] + ([] if args.skip_redis else [("redis", args.redis)])
    for label, counters in backends:
        for budgets in ([], FIVE):
            prefix = f"tfbench:{uuid.uuid4().hex[:8]}"
            lim = await Limiter.create(config(budgets, counters, store), prefix=prefix)
            for conc, upstream in shapes:
                ops = args.ops if not upstream else min(args.ops, int(conc * 2 / upstream))
                p50, p99, rate = await latency(lim, ops, conc, upstream)
                print(
                    f"| {label} | {len(budgets)} | {conc} | {upstream * 1000:.0f} | {p50:.1f} | {p99:.1f} | {rate:,.0f} |"
                )
            if label == "redis":
                from tokenfuse.limits.redis import RedisCounters

                backend = lim._backend
                assert isinstance(backend, RedisCounters)
                await backend.flush_prefix()
            await lim.close()

    print()
    print("| workload | cap | admitted | refused | settled spend / cap |")
    print("|---|---:|---:|---:|---:|")
    for kind in ("chat", "agent", "batch"):
        for cap in (Decimal("1"), Decimal("10")):
            ratio, admitted, refused = await headroom(store, kind, cap)
            print(f"| {kind} | ${cap} | {admitted} | {refused} | {ratio * 100:.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
