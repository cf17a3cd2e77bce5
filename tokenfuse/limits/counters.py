"""The counter backend contract: what the limiter asks of memory and Redis.

A counter is one budget window (or one agent session). It holds, per
dimension, what has been spent and what requests in flight have reserved.
Every figure is an integer: money in nano-dollars rounded up, so a counter can
over-count by at most one nano-dollar per request and never under-count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Protocol

# The order of every counter vector.
DIMS: tuple[str, ...] = ("usd", "requests", "input_uncached", "cache_read", "cache_write", "output", "total")
TOKEN_DIMS: tuple[str, ...] = DIMS[2:]
NDIMS = len(DIMS)
USD, REQUESTS = 0, 1
UNLIMITED = -1
NANO = Decimal(1_000_000_000)

Vec = tuple[int, ...]
ZERO: Vec = (0,) * NDIMS


def to_nano(usd: Decimal) -> int:
    """USD -> integer nano-dollars, rounded up so counters never under-count."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))


def from_nano(n: int) -> Decimal:
    return Decimal(n) / NANO


@dataclass(frozen=True, slots=True)
class Entry:
    """One counter a request is checked against, and how it ages.

    ``expire_at`` is absolute (the end of a calendar window plus a margin);
    ``idle_s`` is relative and refreshed on every write (sessions, rolling
    windows). A rolling window keeps ``rolling_buckets + 1`` buckets of
    ``rolling_bucket_s`` seconds, so it covers at least its whole duration.
    """

    key: str
    limits: Vec
    rolling_bucket_s: int = 0
    rolling_buckets: int = 0
    expire_at: float | None = None
    idle_s: float | None = None
    keep_limits: bool = False  # sessions: store the caps so status can show them
    # (dim, cap) for every limited dimension, so a check skips the others.
    checks: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checks", tuple((d, c) for d, c in enumerate(self.limits) if c != UNLIMITED))


@dataclass(frozen=True, slots=True)
class Shortfall:
    """Why a reservation was refused: entry ``index`` has no room in ``dim``."""

    index: int
    dim: int
    spent: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Reading:
    spent: Vec
    reserved: Vec


@dataclass(frozen=True, slots=True)
class SessionReading:
    session: str
    spent: Vec
    reserved: Vec
    limits: Vec
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class Seed:
    """Spend rebuilt from the ledger: bucket index (0 for fixed windows) -> vector.

    ``touched`` is the last activity, for sessions (idle expiry counts from it).
    """

    entry: Entry
    buckets: dict[int, Vec]
    touched: float | None = None


class CountersUnavailable(RuntimeError):
    """The counter store cannot be reached; the caller decides open or closed."""


class CountersLost(RuntimeError):
    """The store answers but no longer holds the counters the caller knows.

    ``epoch`` is None when the store has no epoch marker at all (it restarted
    empty, was flushed, or the marker was evicted): the counters must be seeded
    from the ledger again before anything is admitted. Otherwise it is the epoch
    another replica seeded since; the caller must catch up before admitting.
    Never a reason to fail open: the store is up, its figures are wrong.
    """

    def __init__(self, epoch: str | None) -> None:
        super().__init__(
            "the budget counters were lost" if epoch is None else f"counter epoch is now {epoch}"
        )
        self.epoch = epoch


class Counters(Protocol):
    async def reserve(
        self, entries: Sequence[Entry], res_id: str, amount: Vec, now: float, ttl_s: float
    ) -> Shortfall | None:
        """Add ``amount`` to the reserved figures of every entry, or to none."""
        ...

    async def settle(
        self, entries: Sequence[Entry], res_id: str, actual: Vec, now: float, want: bool, amount: Vec
    ) -> list[Reading] | None:
        """Drop the reservation of ``amount`` (if still held) and add ``actual`` to spent.

        With ``want`` the entries' figures after the update are returned.
        """
        ...

    async def read(self, entries: Sequence[Entry], now: float) -> list[Reading]: ...

    async def seed(self, seeds: Sequence[Seed], now: float) -> int:
        """Load rebuilt spend into counters that do not exist yet; return how many."""
        ...

    async def sessions(self, now: float) -> list[SessionReading]: ...

    async def close(self) -> None: ...


def add(a: Vec, b: Vec) -> Vec:
    return tuple(x + y for x, y in zip(a, b, strict=True))
