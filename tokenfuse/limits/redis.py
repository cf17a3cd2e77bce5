"""Counters in Redis, shared by every replica: one Lua script call per operation.

Each script runs atomically in Redis, so "check every headroom, then add to
all or none" holds across replicas without locks. Reservations are held in a
per-counter sorted set scored by expiry and purged inside the scripts, so a
replica that dies mid-request stops holding headroom once its TTL passes.
Scripts are sent by SHA (EVALSHA; the client loads them on NOSCRIPT).

Keys: ``<prefix>:<entry key>`` (hash) and ``<prefix>:z:<entry key>`` (sorted
set). A reserve or settle touches several keys, so in Redis Cluster all of a
request's counters would have to share a slot; tokenfuse targets one Redis
(or a primary with replicas), not Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tokenfuse.limits.counters import (
    NDIMS,
    CountersUnavailable,
    Entry,
    Reading,
    Seed,
    SessionReading,
    Shortfall,
    Vec,
)


def _script(name: str) -> str:
    lua = resources.files("tokenfuse.limits") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / f"{name}.lua").read_text()


def _ms(t: float) -> int:
    return int(t * 1000)


def _vec(raw: Sequence[Any]) -> Vec:
    return tuple(int(x) if x else 0 for x in raw)


def _reading(raw: Sequence[Any]) -> Reading:
    return Reading(_vec(raw[:NDIMS]), _vec(raw[NDIMS : 2 * NDIMS]))


def _expiry_args(e: Entry) -> tuple[int, int]:
    at = _ms(e.expire_at) if e.expire_at is not None else 0
    rel = _ms(e.idle_s) if e.idle_s is not None and e.expire_at is None else 0
    return at, rel


def redacted(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


class RedisCounters:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tokenfuse",
        timeout_s: float = 0.5,
        max_connections: int = 64,
        pool_wait_s: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        # Short timeouts and a single immediate retry (for a pooled connection
        # that went stale across a Redis restart): a dead Redis must cost a
        # request milliseconds, not the client library's default back-off.
        # A bounded pool that makes callers wait for a free connection: under a
        # burst, queueing for one of a few dozen sockets is faster than opening
        # hundreds, and it never fails a request for lack of a socket.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_wait_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        self._r: aioredis.Redis = aioredis.Redis(connection_pool=pool)
        self._specs: dict[Entry, str] = {}
        self._held = f"{prefix}:held"
        self._info = f"{prefix}:heldinfo"
        self._reserve = self._r.register_script(_script("reserve"))
        self._settle = self._r.register_script(_script("settle"))
        self._read = self._r.register_script(_script("read"))
        self._seed = self._r.register_script(_script("seed"))

    def _keys(self, entries: Sequence[Entry]) -> list[str]:
        p = self.prefix
        return [self._held, self._info, *(f"{p}:{e.key}" for e in entries)]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {redacted(self.url)}: {type(exc).__name__}: {exc}") from exc

    def _spec(self, e: Entry) -> str:
        """An entry's static arguments as one string (cheaper to send than a dozen)."""
        spec = self._specs.get(e)
        if spec is None:
            if len(self._specs) > 10_000:
                self._specs.clear()
            at, rel = _expiry_args(e)
            spec = ",".join(
                map(str, (_ms(e.rolling_bucket_s), e.rolling_buckets, at, rel, int(e.keep_limits), *e.limits))
            )
            self._specs[e] = spec
        return spec

    async def reserve(
        self, entries: Sequence[Entry], res_id: str, amount: Vec, now: float, ttl_s: float
    ) -> Shortfall | None:
        args: list[Any] = [_ms(now), res_id, _ms(now + ttl_s), len(entries), ",".join(map(str, amount))]
        args += [self._spec(e) for e in entries]
        res = await self._call(self._reserve, self._keys(entries), args)
        if int(res[0]) == 0:
            return None
        return Shortfall(int(res[0]) - 1, int(res[1]) - 1, int(res[2]), int(res[3]))

    async def settle(
        self, entries: Sequence[Entry], res_id: str, actual: Vec, now: float, want: bool, amount: Vec
    ) -> list[Reading] | None:
        args: list[Any] = [
            _ms(now),
            res_id,
            int(want),
            len(entries),
            ",".join(map(str, actual)),
            ",".join(map(str, amount)),
        ]
        args += [self._spec(e) for e in entries]
        res = await self._call(self._settle, self._keys(entries), args)
        return [_reading(r) for r in res] if want else None

    async def read(self, entries: Sequence[Entry], now: float) -> list[Reading]:
        if not entries:
            return []
        args: list[Any] = [_ms(now), len(entries)]
        args += [self._spec(e) for e in entries]
        res = await self._call(self._read, self._keys(entries), args)
        return [_reading(r) for r in res]

    async def seed(self, seeds: Sequence[Seed], now: float) -> int:
        if not seeds:
            return 0
        args: list[Any] = [_ms(now), len(seeds)]
        for sd in seeds:
            e = sd.entry
            at, rel = _expiry_args(e)
            if e.idle_s is not None and sd.touched is not None and e.expire_at is None:
                rel = max(1, _ms(sd.touched + e.idle_s - now))
            args.append(f"{_ms(e.rolling_bucket_s)},{e.rolling_buckets},{at},{rel}")
            args.append(";".join(f"{i}:{','.join(map(str, v))}" for i, v in sorted(sd.buckets.items())))
        created = await self._call(self._seed, self._keys([sd.entry for sd in seeds]), args)
        return int(created)

    async def sessions(self, now: float) -> list[SessionReading]:
        fields = [f"s{d}" for d in range(1, NDIMS + 1)] + [f"r{d}" for d in range(1, NDIMS + 1)] + ["L"]
        head = f"{self.prefix}:s:"
        out: list[SessionReading] = []
        try:
            keys = [k async for k in self._r.scan_iter(match=f"{head}*", count=1000)]
            if not keys:
                return []
            pipe = self._r.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(k, fields)
                pipe.pttl(k)
            res = await pipe.execute()
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {redacted(self.url)}: {exc}") from exc
        for i, k in enumerate(keys):
            raw, ttl = res[2 * i], int(res[2 * i + 1])
            if ttl == -2:
                continue
            limits = tuple(int(x) for x in raw[-1].split(b",")) if raw[-1] else (-1,) * NDIMS
            expires = now + ttl / 1000 if ttl >= 0 else None
            reading = _reading(raw)
            out.append(
                SessionReading(k.decode()[len(head) :], reading.spent, reading.reserved, limits, expires)
            )
        return out

    async def ping(self) -> None:
        try:
            await self._r.ping()
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {redacted(self.url)}: {exc}") from exc

    async def flush_prefix(self) -> int:
        """Delete every key under this prefix (tests and `tokenfuse` maintenance)."""
        n = 0
        async for k in self._r.scan_iter(match=f"{self.prefix}:*", count=1000):
            n += int(await self._r.delete(k))
        return n

    async def close(self) -> None:
        await self._r.aclose()
        await self._r.connection_pool.disconnect()
