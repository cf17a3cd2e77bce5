"""Load generator for the gateway benchmark: one target, one shape, JSON out.

    python bench/gateway_load.py --url URL --body-file F [--header K:V]... --expect TEXT
        (--rate R [--arrivals uniform|poisson|bursty] [--burst N] --conns C | --closed --conns C)
        --duration S [--warmup S]

Open loop (``--rate``): request *i* is due at ``t0 + i / rate`` whatever the
previous answers did, and goes out on a pool of at most ``--conns`` keep-alive
connections; a request that finds every connection busy waits for one, and
that wait counts in its latency. Latency runs from the moment the request's
task starts (not from its nominal due time: the event loop's timer has a
granularity of about a millisecond, which would otherwise be added to both the
direct and the gateway numbers as noise) to the last byte of the answer, so for
streams it is the whole stream. Closed loop (``--closed``): ``--conns`` workers
each send the next request as soon as the previous one is answered.

Arrivals (open loop): ``uniform`` sends request *i* at ``i / rate``;
``poisson`` draws exponential gaps with mean ``1 / rate`` (seeded, so direct
and gateway get the same schedule); ``bursty`` sends ``--burst`` requests at
once every ``burst / rate`` seconds — what ``hey -c 10 -q 20``'s paced workers
do, and what a fleet of agents woken by the same event does.

Prints one JSON object: counts, achieved rate and latency percentiles in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def fail(self, what: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = what


@dataclass(frozen=True)
class Target:
    url: str
    body: bytes
    headers: dict[str, str]
    expect: bytes


async def _one(session: aiohttp.ClientSession, target: Target, tally: Tally | None) -> None:
    start = time.perf_counter()
    try:
        async with session.post(target.url, data=target.body, headers=target.headers) as resp:
            data = await resp.read()
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        if tally is not None:
            tally.fail(type(exc).__name__)
        return
    elapsed = (time.perf_counter() - start) * 1000
    if tally is None:
        return
    if status != 200:
        tally.fail(f"status {status}: {data[:200]!r}")
    elif target.expect not in data:
        tally.fail(f"answer lacks {target.expect!r}: {data[-200:]!r}")
    else:
        tally.latencies.append(elapsed)


def schedule(rate: float, seconds: float, arrivals: str = "uniform", burst: int = 10, seed: int = 1) -> list[float]:
    """Offsets from the start at which each request is due; the mean rate is ``rate`` in every mode."""
    total = int(rate * seconds)
    if arrivals == "poisson":
        rng = random.Random(seed)
        out, t = [], 0.0
        for _ in range(total):
            out.append(t)
            t += rng.expovariate(rate)
        return out
    if arrivals == "bursty":
        return [(i // burst) * burst / rate for i in range(total)]
    return [i / rate for i in range(total)]


async def _open_loop(
    session: aiohttp.ClientSession, target: Target, rate: float, seconds: float, tally: Tally | None,
    arrivals: str = "uniform", burst: int = 10,
) -> tuple[int, float]:
    pending: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    due_at = schedule(rate, seconds, arrivals, burst)
    t0 = loop.time()
    sent = 0
    total = len(due_at)
    while sent < total:
        due = t0 + due_at[sent]
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        # Catch up on everything that fell due while we slept: the offered rate stays fixed.
        now = loop.time()
        while sent < total and t0 + due_at[sent] <= now:
            task = loop.create_task(_one(session, target, tally))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
    offered_s = loop.time() - t0
    if pending:
        # A server that cannot keep up must not stretch the run forever.
        _, late = await asyncio.wait(pending, timeout=max(10.0, seconds))
        for task in late:
            task.cancel()
            if tally is not None:
                tally.fail("unanswered at the end of the run")
    return sent, offered_s


async def _closed_loop(
    session: aiohttp.ClientSession, target: Target, conns: int, seconds: float, tally: Tally | None
) -> tuple[int, float]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stop = t0 + seconds
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while loop.time() < stop:
            sent += 1
            await _one(session, target, tally)

    await asyncio.gather(*(worker() for _ in range(conns)))
    return sent, loop.time() - t0


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


async def run(
    target: Target, conns: int, seconds: float, warmup: float, rate: float | None,
    arrivals: str = "uniform", burst: int = 10,
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=conns, force_close=False, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        # No Accept-Encoding, as SDK-less clients and wrk send none: every target answers uncompressed.
        connector=connector, timeout=timeout, auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
    ) as session:
        if warmup > 0:
            if rate is None:
                await _closed_loop(session, target, conns, warmup, None)
            else:
                await _open_loop(session, target, rate, warmup, None, arrivals, burst)
        tally = Tally()
        epoch0 = time.time()
        t_start = time.perf_counter()
        if rate is None:
            sent, _ = await _closed_loop(session, target, conns, seconds, tally)
        else:
            sent, _ = await _open_loop(session, target, rate, seconds, tally, arrivals, burst)
        wall = time.perf_counter() - t_start
        epoch1 = time.time()
    lat = sorted(tally.latencies)
    return {
        "sent": sent,
        "ok": len(lat),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "seconds": round(wall, 3),
        "achieved_rps": round(len(lat) / wall, 1) if wall > 0 else 0.0,
        "offered_rps": rate,
        "arrivals": arrivals if rate is not None else "closed",
        "conns": conns,
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p90_ms": round(percentile(lat, 0.90), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "max_ms": round(lat[-1], 3) if lat else float("nan"),
        "epoch_start": epoch0,
        "epoch_end": epoch1,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True)
    parser.add_argument("--header", action="append", default=[], help="NAME:VALUE, repeatable")
    parser.add_argument("--expect", required=True, help="text every successful answer contains")
    parser.add_argument("--rate", type=float, help="open loop: requests per second offered")
    parser.add_argument("--closed", action="store_true", help="closed loop: as fast as answers come back")
    parser.add_argument("--arrivals", choices=["uniform", "poisson", "bursty"], default="uniform")
    parser.add_argument("--burst", type=int, default=10, help="requests per burst with --arrivals bursty")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    if (args.rate is None) == (not args.closed):
        parser.error("give exactly one of --rate R or --closed")
    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep:
            parser.error(f"--header {h!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    with open(args.body_file, "rb") as f:
        body = f.read()
    target = Target(args.url, body, headers, args.expect.encode())
    coro = run(target, args.conns, args.duration, args.warmup, args.rate, args.arrivals, args.burst)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
