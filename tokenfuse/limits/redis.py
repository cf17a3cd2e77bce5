"""Counters in Redis, shared by every replica: one Lua script call per operation.

Each script runs atomically in Redis, so "check every headroom, then add to
all or none" holds across replicas without locks. Reservations are held in a
per-counter sorted set scored by expiry and purged inside the scripts, so a
replica that dies mid-request stops holding headroom once its TTL passes.
Scripts are sent by SHA (EVALSHA; the client loads them on NOSCRIPT).

The request path uses one call, `exchange`: the settles this replica has
waiting, then the next reserve (lua/batch.lua), written on one pipelined
connection (`pipe.py`) rather than through redis-py's per-command machinery.

Keys: ``<prefix>:<entry key>`` (hash per counter), ``<prefix>:held`` and
``<prefix>:heldinfo`` (reservations in flight), ``<prefix>:epoch`` (written when
the counters are seeded from the ledger; a Redis that restarted empty or was
flushed has none, and every reserve checks it) and ``<prefix>:seedlock`` (the
replica re-seeding them). A reserve or settle touches several keys, so in Redis Cluster all of a
request's counters would have to share a slot; tokenfuse targets one Redis
(or a primary with replicas), not Cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from tokenfuse.limits import pipe
from tokenfuse.limits.counters import (
    NDIMS,
    CountersLost,
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


# Not frozen: made for every request, and a frozen dataclass's __init__ costs
# microseconds (object.__setattr__ per field).
@dataclass(slots=True)
class SettleOp:
    """One settle (or release: ``actual`` all zeros) carried by `exchange`."""

    entries: Sequence[Entry]
    res_id: str
    actual: Vec
    amount: Vec  # what was reserved
    now: float
    want: bool  # return the counters' figures after it


@dataclass(slots=True)
class ReserveOp:
    """The reserve carried by `exchange`, against the counters of ``epoch``."""

    epoch: str
    entries: Sequence[Entry]
    res_id: str
    amount: Vec
    now: float
    ttl_s: float
    want_used: bool = False


class _Wire:
    """An entry's key and static arguments, framed for the wire once."""

    __slots__ = ("key", "spec")

    def __init__(self, key: bytes, spec: bytes) -> None:
        self.key = key
        self.spec = spec


def _csv(v: Vec) -> bytes:
    return pipe.bulk(",".join(map(str, v)))


@dataclass(slots=True)
class Reserved:
    """A reserve's answer: why it was refused, or (when asked) each counter's
    spent + reserved after the reservation, the last known use of each budget."""

    short: Shortfall | None
    used: list[Vec] | None = None


def redacted(url: str) -> str:
    """The URL without a password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url


_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


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
        self._pool = pool
        # The hot path's connection (plain redis:// URLs; others use the pool).
        self._pipe = pipe.Pipe(url, timeout_s=timeout_s) if pipe.supported(url) else None
        self._specs: dict[Entry, str] = {}
        self._wires: dict[Entry, _Wire] = {}
        # The epoch this client last saw (None before it knows one).
        self.epoch: str | None = None
        self._held = f"{prefix}:held"
        self._info = f"{prefix}:heldinfo"
        self._epoch = f"{prefix}:epoch"
        self._lock = f"{prefix}:seedlock"
        self._reserve = self._r.register_script(_script("reserve"))
        self._settle = self._r.register_script(_script("settle"))
        self._read = self._r.register_script(_script("read"))
        self._seed = self._r.register_script(_script("seed"))
        self._rehold = self._r.register_script(_script("rehold"))
        self._unlock = self._r.register_script(_UNLOCK)
        self._batch_lua = _script("batch")
        self._batch = self._r.register_script(self._batch_lua)
        held, info, ep = pipe.bulk(self._held), pipe.bulk(self._info), pipe.bulk(self._epoch)
        self._batch_head = [pipe.bulk(b"EVALSHA"), pipe.bulk(self._batch.sha), b"", held, info, ep]

    def _keys(self, entries: Sequence[Entry]) -> list[str]:
        p = self.prefix
        return [self._held, self._info, self._epoch, *(f"{p}:{e.key}" for e in entries)]

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

    def _wire(self, e: Entry) -> _Wire:
        w = self._wires.get(e)
        if w is None:
            if len(self._wires) > 10_000:
                self._wires.clear()
            w = self._wires[e] = _Wire(pipe.bulk(f"{self.prefix}:{e.key}"), pipe.bulk(self._spec(e)))
        return w

    async def exchange(
        self, settles: Sequence[SettleOp], reserve: ReserveOp | None = None
    ) -> tuple[list[list[Reading] | None], Reserved | CountersLost | None]:
        """Apply ``settles`` in order, then try ``reserve``, in one atomic script call.

        Returns each settle's figures (None unless it asked and changed
        something), and the reserve's answer: Reserved, or CountersLost when the
        counters are not those of its epoch (the settles were applied all the
        same), or None without a reserve. Raises CountersUnavailable when Redis
        cannot be reached; the settles may then have been applied or not.
        """
        bulk = pipe.bulk
        index: dict[_Wire, int] = {}
        keys: list[bytes] = []
        specs: list[bytes] = []

        def counter(e: Entry) -> int:
            w = self._wire(e)
            i = index.get(w)
            if i is None:
                i = index[w] = len(keys) + 1
                keys.append(w.key)
                specs.append(w.spec)
            return i

        tail: list[bytes] = []
        if reserve is not None:
            for e in reserve.entries:
                counter(e)
            n = len(keys)  # the reserve's counters come first: 1..n
            tail = [
                bulk(str(int(reserve.now * 1000))),
                bulk(reserve.res_id),
                bulk(str(int((reserve.now + reserve.ttl_s) * 1000))),
                _csv(reserve.amount),
                bulk(reserve.epoch),
                b"$1\r\n1\r\n" if reserve.want_used else b"$1\r\n0\r\n",
                bulk(str(n)),
            ]
        middle: list[bytes] = [bulk(str(len(settles)))]
        for op in settles:
            idx = ",".join(str(counter(e)) for e in op.entries)
            middle += (
                bulk(op.res_id),
                bulk(str(int(op.now * 1000))),
                b"$1\r\n1\r\n" if op.want else b"$1\r\n0\r\n",
                _csv(op.actual),
                _csv(op.amount),
                bulk(idx),
            )
        head = self._batch_head.copy()
        head[2] = bulk(str(3 + len(keys)))
        parts = [*head, *keys, bulk(str(len(keys))), *specs, *middle, *tail]
        res = await self._send(pipe.command(parts))
        settled, answer = res
        readings: list[list[Reading] | None] = []
        for op, raw in zip(settles, settled, strict=True):
            readings.append([_reading(r) for r in raw] if op.want and len(raw) == len(op.entries) else None)
        if reserve is None:
            return readings, None
        code = int(answer[0])
        if code == 0:
            used = [tuple(int(x) for x in r.split(b",")) for r in answer[1:]] if reserve.want_used else None
            return readings, Reserved(None, used)
        if code < 0:
            return readings, CountersLost(answer[1].decode() if code == -2 else None)
        return readings, Reserved(Shortfall(code - 1, int(answer[1]) - 1, int(answer[2]), int(answer[3])))

    async def _send(self, packed: bytes) -> Any:
        """One EVALSHA of the batch script; loads the script once if Redis does not know it."""
        try:
            for _ in range(2):
                reply = await self._raw(packed)
                if not isinstance(reply, ResponseError):
                    return reply
                if not str(reply).startswith("NOSCRIPT"):
                    raise reply
                await self._r.script_load(self._batch_lua)
            raise ResponseError("the batch script could not be loaded")
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {redacted(self.url)}: {type(exc).__name__}: {exc}") from exc

    async def _raw(self, packed: bytes) -> Any:
        if self._pipe is not None:
            return await self._pipe.call(packed)
        # TLS, sockets, URL options: a pooled redis-py connection, with the
        # command packed here all the same.
        conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed, check_health=False)
            try:
                return await conn.read_response()
            except ResponseError as err:
                return err
        finally:
            await self._pool.release(conn)

    async def reserve(
        self, entries: Sequence[Entry], res_id: str, amount: Vec, now: float, ttl_s: float
    ) -> Shortfall | None:
        """The Counters contract, for a caller that tracks no epoch: it adopts the store's."""
        try:
            return (await self.reserve_in(self.epoch or "", entries, res_id, amount, now, ttl_s)).short
        except CountersLost as lost:
            if lost.epoch is None:
                raise
            self.epoch = lost.epoch
            return (await self.reserve_in(lost.epoch, entries, res_id, amount, now, ttl_s)).short

    async def reserve_in(
        self,
        epoch: str,
        entries: Sequence[Entry],
        res_id: str,
        amount: Vec,
        now: float,
        ttl_s: float,
        want_used: bool = False,
    ) -> Reserved:
        """Reserve, provided the counters are still those of ``epoch``; raise CountersLost if not."""
        args: list[Any] = [
            _ms(now),
            res_id,
            _ms(now + ttl_s),
            len(entries),
            ",".join(map(str, amount)),
            epoch,
            int(want_used),
        ]
        args += [self._spec(e) for e in entries]
        res = await self._call(self._reserve, self._keys(entries), args)
        code = int(res[0])
        if code == 0:
            used = [tuple(int(x) for x in r.split(b",")) for r in res[1:]] if want_used else None
            return Reserved(None, used)
        if code < 0:
            raise CountersLost(res[1].decode() if code == -2 else None)
        return Reserved(Shortfall(code - 1, int(res[1]) - 1, int(res[2]), int(res[3])))

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
        if not want or len(res) != len(entries):  # settled before: nothing changed
            return None
        return [_reading(r) for r in res]

    async def read(self, entries: Sequence[Entry], now: float) -> list[Reading]:
        if not entries:
            return []
        args: list[Any] = [_ms(now), len(entries)]
        args += [self._spec(e) for e in entries]
        res = await self._call(self._read, self._keys(entries), args)
        return [_reading(r) for r in res]

    async def seed(self, seeds: Sequence[Seed], now: float) -> int:
        """Create the counters that do not exist yet; CountersLost if the store has no epoch."""
        if not seeds:
            return 0
        created, _ = await self._seed_call(seeds, now, "")
        if created < 0:
            raise CountersLost(None)
        return created

    async def seed_epoch(self, seeds: Sequence[Seed], now: float, epoch: str) -> bool:
        """After a loss: add the ledger's spend to every counter and mark ``epoch``.

        False if another replica set a marker first (then only missing counters are created).
        """
        _, fresh = await self._seed_call(seeds, now, epoch)
        if fresh:
            self.epoch = epoch
        return fresh

    async def _seed_call(self, seeds: Sequence[Seed], now: float, epoch: str) -> tuple[int, bool]:
        args: list[Any] = [_ms(now), len(seeds), epoch]
        for sd in seeds:
            e = sd.entry
            at, rel = _expiry_args(e)
            if e.idle_s is not None and sd.touched is not None and e.expire_at is None:
                rel = max(1, _ms(sd.touched + e.idle_s - now))
            args.append(f"{_ms(e.rolling_bucket_s)},{e.rolling_buckets},{at},{rel}")
            args.append(";".join(f"{i}:{','.join(map(str, v))}" for i, v in sorted(sd.buckets.items())))
        res = await self._call(self._seed, self._keys([sd.entry for sd in seeds]), args)
        return int(res[0]), int(res[1]) == 1

    async def rehold(self, holds: Sequence[tuple[str, float, Vec, Sequence[Entry]]]) -> int:
        """Hold again (id, expiry, amount, entries) reservations the store no longer knows."""
        if not holds:
            return 0
        index: dict[Entry, int] = {}
        for _, _, _, entries in holds:
            for e in entries:
                index.setdefault(e, len(index) + 1)
        order = list(index)
        args: list[Any] = [len(order)]
        for e in order:
            at, rel = _expiry_args(e)
            args.append(f"{_ms(e.rolling_bucket_s)},{e.rolling_buckets},{at},{rel}")
        for res_id, expiry, amount, entries in holds:
            args += [
                res_id,
                _ms(expiry),
                ",".join(map(str, amount)),
                ",".join(str(index[e]) for e in entries),
            ]
        return int(await self._call(self._rehold, self._keys(order), args))

    async def current_epoch(self) -> str | None:
        try:
            raw = await self._r.get(self._epoch)
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {redacted(self.url)}: {exc}") from exc
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def lock_seeding(self, owner: str, ttl_s: float) -> bool:
        """Become the one replica re-seeding lost counters (SET NX with a TTL, so a dead one lets go)."""
        try:
            return bool(await self._r.set(self._lock, owner, nx=True, px=_ms(ttl_s)))
        except (TimeoutError, RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {redacted(self.url)}: {exc}") from exc

    async def unlock_seeding(self, owner: str) -> None:
        try:
            await self._unlock(keys=[self._lock], args=[owner])
        except (TimeoutError, RedisError, OSError):
            pass  # the lock's TTL frees it

    async def eviction_policy(self) -> str | None:
        """Redis's maxmemory-policy when a maxmemory is set, else None (also when CONFIG is not allowed)."""
        try:
            raw: dict[Any, Any] = dict(await self._r.config_get("maxmemory*"))
        except (TimeoutError, RedisError, OSError):
            return None
        got = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in raw.items()}
        policy, limit = got.get("maxmemory-policy"), got.get("maxmemory")
        if policy is None or limit in (None, 0, "0", b"0"):
            return None
        return policy.decode() if isinstance(policy, bytes) else str(policy)

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
        if self._pipe is not None:
            self._pipe.close()
        await self._r.aclose()
        await self._r.connection_pool.disconnect()
