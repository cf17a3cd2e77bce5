"""One pipelined connection to Redis for the counter scripts: the hot path's wire.

redis-py spends about 70 µs of CPU per command on its asyncio plumbing (pool
condition and lock, a readiness probe of the socket, a timeout context per
read, observability hooks); the counter scripts need none of it. Here every
command is written at once to a single socket and the replies, which Redis
sends in order, are matched to their callers first-in first-out by a hiredis
reader: about 10–15 µs per command, and several replies per wake-up under load.

What this connection promises, and what it does not:

- A command is written at most once. If the connection breaks or no reply
  comes within ``timeout_s`` after it was written, the command may or may not
  have run; its caller gets :class:`redis.exceptions.ConnectionError` or
  ``TimeoutError`` and decides (the counters treat both as "store
  unavailable"). Every command still waiting fails with it, since the replies
  of a broken pipeline cannot be matched any more; the next command reconnects.
- Error replies are returned as :class:`redis.exceptions.ResponseError`
  values, not raised, so a caller can tell NOSCRIPT from a lost connection.
- Only plain ``redis://[user:password@]host[:port][/db]`` URLs with no query
  are handled (:func:`supported`); anything else (TLS, sockets, options) goes
  through redis-py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def bulk(s: str | bytes) -> bytes:
    """One RESP bulk string."""
    b = s.encode() if isinstance(s, str) else s
    return b"$%d\r\n%s\r\n" % (len(b), b)


def command(parts: Sequence[bytes]) -> bytes:
    """A RESP command from parts already framed by :func:`bulk`."""
    return b"*%d\r\n%s" % (len(parts), b"".join(parts))


def supported(url: str) -> bool:
    u = urlparse(url)
    return u.scheme == "redis" and not u.query and not u.fragment


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.pipe._waiting
        while True:
            try:
                reply = self.reader.gets()
            except Exception as exc:  # a protocol error: nothing after it can be trusted
                self.pipe._fail(self, RedisConnectionError(f"bad reply from Redis: {exc}"))
                return
            if reply is False:
                return
            if not waiting:
                self.pipe._fail(self, RedisConnectionError("Redis sent a reply nobody asked for"))
                return
            fut = waiting.popleft()[0]
            if not fut.done():
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.pipe._fail(self, RedisConnectionError(f"connection to Redis lost: {exc or 'closed by the server'}"))


class Pipe:
    def __init__(self, url: str, *, timeout_s: float = 0.5) -> None:
        u = urlparse(url)
        self.host = u.hostname or "localhost"
        self.port = u.port or 6379
        path = unquote(u.path).strip("/")
        self.db = int(path) if path else 0
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout_s = timeout_s
        self._proto: _Protocol | None = None  # the connection, from its first byte
        self._ready: _Protocol | None = None  # the same once AUTH and SELECT went through
        self._connecting: asyncio.Future[_Protocol] | None = None
        # (future, deadline) of every command written and not answered yet, in order.
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._watchdog: asyncio.TimerHandle | None = None
        # Commands of this event-loop turn, written together at its end: one
        # send() for all the requests that reserved in the same turn.
        self._out: list[bytes] = []

    async def call(self, packed: bytes) -> Any:
        """Send one packed command and return its reply (an error reply as a ResponseError value)."""
        proto = self._ready
        if proto is None:
            proto = await self._connect()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._waiting.append((fut, loop.time() + self.timeout_s))
        self._out.append(packed)
        if len(self._out) == 1:
            loop.call_soon(self._write, proto)
        if self._watchdog is None:
            self._watchdog = loop.call_at(self._waiting[0][1], self._check)
        return await fut

    async def _connect(self) -> _Protocol:
        # One connection attempt at a time; concurrent callers wait for it.
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        loop = asyncio.get_running_loop()
        connecting: asyncio.Future[_Protocol] = loop.create_future()
        self._connecting = connecting
        try:
            proto = await self._open(loop)
        except asyncio.CancelledError:
            connecting.cancel()
            raise
        except Exception as exc:
            err = exc
            if isinstance(exc, TimeoutError):
                err = RedisTimeoutError(f"Timeout connecting to {self.host}:{self.port}")
            elif isinstance(exc, OSError):
                err = RedisConnectionError(f"Error connecting to {self.host}:{self.port}: {exc}")
            connecting.set_exception(err)
            connecting.exception()  # marked retrieved: the waiters, if any, get it through shield
            if err is exc:
                raise
            raise err from exc
        finally:
            self._connecting = None
        connecting.set_result(proto)
        return proto

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        proto: _Protocol | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                _, proto = await loop.create_connection(lambda: _Protocol(self), self.host, self.port)
                self._proto = proto
                setup: list[list[bytes]] = []
                if self.password is not None:
                    user = [self.username.encode()] if self.username else []
                    setup.append([b"AUTH", *user, self.password.encode()])
                if self.db:
                    setup.append([b"SELECT", str(self.db).encode()])
                futs: list[asyncio.Future[Any]] = []
                for parts in setup:
                    futs.append(loop.create_future())
                    self._waiting.append((futs[-1], loop.time() + self.timeout_s))
                    assert proto.transport is not None
                    proto.transport.write(command([bulk(x) for x in parts]))
                for fut in futs:
                    reply = await fut
                    if isinstance(reply, ResponseError):
                        raise RedisConnectionError(f"Redis refused the connection setup: {reply}")
                self._ready = proto
                return proto
        except BaseException as exc:
            if proto is not None:
                self._fail(proto, RedisConnectionError(f"connecting to Redis failed: {exc!r}"))
            raise

    def _write(self, proto: _Protocol) -> None:
        if proto is not self._ready:
            return  # that connection failed: its commands failed with it
        out, self._out = self._out, []
        assert proto.transport is not None
        proto.transport.write(b"".join(out))

    def _check(self) -> None:
        """The watchdog: fail the pipeline when its oldest command has waited too long."""
        self._watchdog = None
        if not self._waiting or self._proto is None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._waiting[0][1]
        if loop.time() >= deadline:
            self._fail(self._proto, RedisTimeoutError(f"Timeout reading from {self.host}:{self.port}"))
        else:
            self._watchdog = loop.call_at(deadline, self._check)

    def _fail(self, proto: _Protocol, exc: Exception) -> None:
        if proto is not self._proto:
            return  # an old connection, already failed
        self._proto = self._ready = None
        if proto.transport is not None:
            proto.transport.abort()
        self._out = []
        waiting, self._waiting = self._waiting, deque()
        for fut, _ in waiting:
            if not fut.done():
                # One instance per waiter: a raised exception collects its raiser's traceback.
                fut.set_exception(type(exc)(*exc.args))
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        if self._proto is not None:
            self._fail(self._proto, RedisConnectionError("connection closed"))
