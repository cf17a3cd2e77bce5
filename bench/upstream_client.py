"""Issue 14: CPU per call of the gateway's upstream client, aiohttp against tokenfuse's own.

    python bench/upstream_client.py [--n 2000] [--rounds 5] [--concurrency 32] [--no-httpx]

A fixed-answer HTTP/1.1 server (uvloop + httptools, keep-alive) runs in another
process. This process POSTs a ~1 kB body with the gateway's usual forwarded
headers, N requests back to back and N with `--concurrency` in flight, through
aiohttp configured exactly as the gateway had it, through httpx (unlimited
pool, HTTP/1.1) and through `tokenfuse.gateway.httpclient`; whole answers
(`read()`) and a 20-event SSE stream (chunked, iterated as it arrives). The
figure is this process's CPU (`time.process_time`, user + system) divided by N:
what the client costs the gateway per request; user time alone is printed too
(the syscalls are the same for every client). Rounds interleave the clients
(their order rotating), and the medians are printed. Not a test: numbers for
one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import resource
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import httptools
import httpx
import uvloop

from tokenfuse.gateway.httpclient import HTTPClient

ANSWER = (
    b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"test-model","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"hello hello hello hello hello"},"finish_reason":"length"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}'
)
WHOLE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_1\r\n"
    b"openai-processing-ms: 3\r\ncontent-length: %d\r\n\r\n%b" % (len(ANSWER), ANSWER)
)
EVENT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
STREAM_EVENTS = 20
BODY = b'{"model":"test-model","messages":[{"role":"user","content":"' + b"x" * 900 + b'"}],"max_tokens":5}'
HEADERS = {
    "content-type": "application/json", "accept": "application/json", "user-agent": "OpenAI/Python 1.99.0",
    "x-stainless-lang": "python", "x-stainless-package-version": "1.99.0", "x-stainless-os": "Linux",
    "x-stainless-arch": "x64", "x-stainless-runtime": "CPython", "accept-encoding": "identity",
    "authorization": "Bearer sk-upstream-0000000000000000000000000000",
}


# -- the fixed-answer server (its own process) -------------------------------------


class _Server(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.stream = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.stream = url.endswith(b"/stream")

    def on_message_complete(self) -> None:
        assert self.transport is not None
        if not self.stream:
            self.transport.write(WHOLE)
            return
        # Events as separate writes, as a provider flushes them.
        self.transport.write(STREAM_HEAD)
        chunk = b"%x\r\n%b\r\n" % (len(EVENT), EVENT)
        for _ in range(STREAM_EVENTS):
            self.transport.write(chunk)
        self.transport.write(b"0\r\n\r\n")


def _serve(sock: socket.socket) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Server, sock=sock)
        await server.serve_forever()

    uvloop.run(main())


# -- the clients -------------------------------------------------------------------

Call = Callable[[str], Awaitable[int]]


def aiohttp_session() -> aiohttp.ClientSession:
    """As gateway/app.py configured it before this change."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=600.0),
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def aiohttp_call(session: aiohttp.ClientSession) -> tuple[Call, Call]:
    async def whole(url: str) -> int:
        resp = await session.post(url, data=BODY, headers=HEADERS)
        try:
            data = await resp.read()
            for _k, _v in resp.headers.items():
                pass
        finally:
            resp.release()
        return len(data)

    async def stream(url: str) -> int:
        resp = await session.post(url, data=BODY, headers=HEADERS)
        n = 0
        try:
            async for chunk in resp.content.iter_any():
                n += len(chunk)
        finally:
            resp.release()
        return n

    return whole, stream


def httpx_call(client: httpx.AsyncClient) -> tuple[Call, Call]:
    async def whole(url: str) -> int:
        resp = await client.post(url, content=BODY, headers=HEADERS)
        for _k, _v in resp.headers.multi_items():
            pass
        return len(resp.content)

    async def stream(url: str) -> int:
        n = 0
        async with client.stream("POST", url, content=BODY, headers=HEADERS) as resp:
            async for chunk in resp.aiter_raw():
                n += len(chunk)
        return n

    return whole, stream


def own_call(client: HTTPClient) -> tuple[Call, Call]:
    async def whole(url: str) -> int:
        resp = await client.post(url, BODY, HEADERS)
        try:
            data = await resp.read()
            for _k, _v in resp.headers:
                pass
        finally:
            resp.release()
        return len(data)

    async def stream(url: str) -> int:
        resp = await client.post(url, BODY, HEADERS)
        n = 0
        try:
            async for chunk in resp.iter_chunks():
                n += len(chunk)
        finally:
            resp.release()
        return n

    return whole, stream


def _user() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


async def _sequential(call: Call, url: str, n: int) -> tuple[float, float]:
    t0, u0 = time.process_time(), _user()
    for _ in range(n):
        await call(url)
    return (time.process_time() - t0) / n * 1e6, (_user() - u0) / n * 1e6


async def _concurrent(call: Call, url: str, n: int, c: int) -> tuple[float, float]:
    async def worker(k: int) -> None:
        for _ in range(k):
            await call(url)

    t0, u0 = time.process_time(), _user()
    await asyncio.gather(*(worker(n // c) for _ in range(c)))
    done = n // c * c
    return (time.process_time() - t0) / done * 1e6, (_user() - u0) / done * 1e6


async def run(
    base: str, n: int, rounds: int, c: int, with_httpx: bool
) -> dict[tuple[str, str], list[tuple[float, float]]]:
    session = aiohttp_session()
    client = HTTPClient(connect_timeout=10.0, read_timeout=600.0)
    hx = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=60),
        timeout=httpx.Timeout(None, connect=10.0, read=600.0),
    )
    clients = {"aiohttp": aiohttp_call(session), "httpclient": own_call(client)}
    if with_httpx:
        clients["httpx"] = httpx_call(hx)
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    cells: list[tuple[str, Callable[[Call], Awaitable[tuple[float, float]]]]] = [
        ("whole, sequential", lambda f: _sequential(f, f"{base}/v1/chat/completions", n)),
        (f"whole, {c} concurrent", lambda f: _concurrent(f, f"{base}/v1/chat/completions", n, c)),
        ("stream, sequential", lambda f: _sequential(f, f"{base}/v1/stream", n)),
        (f"stream, {c} concurrent", lambda f: _concurrent(f, f"{base}/v1/stream", n, c)),
    ]
    try:
        for name, (whole, stream) in clients.items():  # warm up: connections, caches
            await _concurrent(whole, f"{base}/v1/chat/completions", 4 * c, c)
            await _concurrent(stream, f"{base}/v1/stream", 4 * c, c)
            del name
        for r in range(rounds):
            names = list(clients)
            order = names[r % len(names):] + names[: r % len(names)]
            for cell, measure in cells:
                for name in order:
                    whole, stream = clients[name]
                    us = await measure(stream if cell.startswith("stream") else whole)
                    results.setdefault((cell, name), []).append(us)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        await session.close()
        await client.close()
        await hx.aclose()
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="requests per cell and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--no-httpx", action="store_true")
    args = ap.parse_args(argv)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(sock,), daemon=True)
    server.start()
    try:
        results = uvloop.run(run(f"http://127.0.0.1:{sock.getsockname()[1]}", args.n, args.rounds, args.concurrency,
                                 not args.no_httpx))
    finally:
        server.terminate()
        server.join(5)
    names = [c for c in ("aiohttp", "httpx", "httpclient") if any(k[1] == c for k in results)]
    cells = list(dict.fromkeys(cell for cell, _ in results))
    for i, what in enumerate(("user + system (time.process_time)", "user alone")):
        print(f"\nclient CPU per request, µs, {what}: median of {args.rounds} interleaved rounds of {args.n}"
              " [min–max]\n")
        print("| cell | " + " | ".join(names) + " | httpclient / aiohttp |")
        print("|---|" + "---:|" * (len(names) + 1))
        for cell in cells:
            values = {name: [v[i] for v in results[cell, name]] for name in names}
            med = {name: statistics.median(v) for name, v in values.items()}
            shown = [f"{med[nm]:.0f} [{min(values[nm]):.0f}–{max(values[nm]):.0f}]" for nm in names]
            print(f"| {cell} | " + " | ".join(shown) + f" | {med['httpclient'] / med['aiohttp']:.2f} |")

if __name__ == "__main__":
    main()
