"""In-process counters: the default backend for one gateway process.

Every operation runs to completion without awaiting, so on one event loop a
reserve is atomic across all its entries. Reservations are kept in insertion
order; with one TTL for all of them that is also expiry order, so purging
expired ones looks only at the oldest.

An expired reservation is *charged*: its amount moves from reserved to spent,
because nobody knows what the provider billed for a request whose gateway
stopped tracking it. A settle that arrives later replaces the charge by the
actual usage (see docs/limits.md, "Reservation TTL").
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from tokenfuse.limits.counters import (
    NDIMS,
    UNLIMITED,
    ZERO,
    Entry,
    Reading,
    Seed,
    SessionReading,
    Shortfall,
    Vec,
)

_SWEEP_EVERY_S = 60.0
# How long a charged reservation can still be corrected by a late settle.
CHARGED_KEEP_S = 86400.0


class _Slot:
    __slots__ = ("buckets", "charged", "held", "hi", "limits", "lo", "reserved", "spent", "touched")

    def __init__(self, now: float) -> None:
        self.spent = [0] * NDIMS
        self.reserved = [0] * NDIMS
        self.held: OrderedDict[str, tuple[float, Vec]] = OrderedDict()
        self.charged: OrderedDict[str, tuple[float, Vec]] = OrderedDict()
        self.buckets: dict[int, list[int]] = {}
        self.lo = 0
        self.hi = -1
        self.touched = now
        self.limits: Vec = (UNLIMITED,) * NDIMS


def _dead(slot: _Slot, e: Entry, now: float) -> bool:
    if e.expire_at is not None and now >= e.expire_at:
        return True
    return e.idle_s is not None and now - slot.touched >= e.idle_s


class MemoryCounters:
    def __init__(self) -> None:
        self._slots: dict[str, tuple[_Slot, Entry]] = {}
        self._next_sweep = 0.0

    # -- the Counters protocol ------------------------------------------------

    async def reserve(
        self, entries: Sequence[Entry], res_id: str, amount: Vec, now: float, ttl_s: float
    ) -> Shortfall | None:
        return self.reserve_now(entries, res_id, amount, now, ttl_s)

    async def settle(
        self, entries: Sequence[Entry], res_id: str, actual: Vec, now: float, want: bool, amount: Vec
    ) -> list[Reading] | None:
        return self.settle_now(entries, res_id, actual, now, want)

    async def read(self, entries: Sequence[Entry], now: float) -> list[Reading]:
        out = []
        for e in entries:
            slot = self._existing(e, now)
            if slot is None:
                out.append(Reading(ZERO, ZERO))
            else:
                self._purge(slot, e, now)
                self._roll(slot, e, now)
                out.append(Reading(tuple(slot.spent), tuple(slot.reserved)))
        return out

    async def seed(self, seeds: Sequence[Seed], now: float) -> int:
        n = 0
        for sd in seeds:
            e = sd.entry
            if self._existing(e, now) is not None:
                continue
            slot = _Slot(now if sd.touched is None else sd.touched)
            if e.rolling_bucket_s:
                for idx in sorted(sd.buckets):
                    slot.buckets[idx] = list(sd.buckets[idx])
                if slot.buckets:
                    slot.lo, slot.hi = min(slot.buckets), max(slot.buckets)
            for vec in sd.buckets.values():
                for d in range(NDIMS):
                    slot.spent[d] += vec[d]
            if _dead(slot, e, now):
                continue
            self._roll(slot, e, now)
            self._slots[e.key] = (slot, e)
            n += 1
        return n

    async def sessions(self, now: float) -> list[SessionReading]:
        out = []
        for key, (slot, e) in list(self._slots.items()):
            if not key.startswith("s:") or _dead(slot, e, now):
                continue
            self._purge(slot, e, now)
            expires = None if e.idle_s is None else slot.touched + e.idle_s
            out.append(SessionReading(key[2:], tuple(slot.spent), tuple(slot.reserved), slot.limits, expires))
        return out

    async def close(self) -> None:
        self._slots.clear()

    # -- synchronous core -------------------------------------------------------

    def reserve_now(
        self, entries: Sequence[Entry], res_id: str, amount: Vec, now: float, ttl_s: float
    ) -> Shortfall | None:
        if now >= self._next_sweep:
            self._sweep(now)
        slots = []
        for i, e in enumerate(entries):
            slot = self._slot(e, now)
            if slot.held or slot.charged:
                self._purge(slot, e, now)
            if e.rolling_bucket_s:
                self._roll(slot, e, now)
            spent, res = slot.spent, slot.reserved
            for d, cap in e.checks:
                if spent[d] + res[d] + amount[d] > cap:
                    return Shortfall(i, d, spent[d], res[d])
            slots.append(slot)
        held = (now + ttl_s, amount)
        for slot, e in zip(slots, entries, strict=True):
            slot.reserved = [r + a for r, a in zip(slot.reserved, amount, strict=True)]
            slot.held[res_id] = held
            slot.touched = now
            if e.keep_limits:
                slot.limits = e.limits
        return None

    def settle_now(
        self, entries: Sequence[Entry], res_id: str, actual: Vec, now: float, want: bool
    ) -> list[Reading] | None:
        out: list[Reading] | None = [] if want else None
        for e in entries:
            slot = self._slot(e, now)
            delta = actual
            held = slot.held.pop(res_id, None)
            if held is not None:
                slot.reserved = [r - a for r, a in zip(slot.reserved, held[1], strict=True)]
            else:
                charged = slot.charged.pop(res_id, None)
                if charged is not None:
                    delta = tuple(u - a for u, a in zip(actual, charged[1], strict=True))
            self._spend(slot, e, delta, now)
            slot.touched = now
            if out is not None:
                out.append(Reading(tuple(slot.spent), tuple(slot.reserved)))
        return out

    def _spend(self, slot: _Slot, e: Entry, vec: Vec, now: float) -> None:
        if e.rolling_bucket_s:
            self._roll(slot, e, now)
            cur = math.floor(now / e.rolling_bucket_s)
            bucket = slot.buckets.get(cur)
            if bucket is None:
                bucket = slot.buckets[cur] = [0] * NDIMS
                if len(slot.buckets) == 1:
                    slot.lo = slot.hi = cur
                slot.lo, slot.hi = min(slot.lo, cur), max(slot.hi, cur)
            for d in range(NDIMS):
                bucket[d] += vec[d]
        slot.spent = [s + v for s, v in zip(slot.spent, vec, strict=True)]

    def _existing(self, e: Entry, now: float) -> _Slot | None:
        found = self._slots.get(e.key)
        if found is None:
            return None
        slot = found[0]
        if _dead(slot, found[1], now):
            del self._slots[e.key]
            return None
        return slot

    def _slot(self, e: Entry, now: float) -> _Slot:
        found = self._slots.get(e.key)
        if found is not None and not _dead(found[0], e, now):
            if found[1] is not e:
                self._slots[e.key] = (found[0], e)
            return found[0]
        slot = _Slot(now)
        self._slots[e.key] = (slot, e)
        return slot

    def _purge(self, slot: _Slot, e: Entry, now: float) -> None:
        held = slot.held
        while held:
            res_id, (expiry, amount) = next(iter(held.items()))
            if expiry > now:
                break
            del held[res_id]
            slot.reserved = [r - a for r, a in zip(slot.reserved, amount, strict=True)]
            self._spend(slot, e, amount, now)
            slot.charged[res_id] = (now + CHARGED_KEEP_S, amount)
        charged = slot.charged
        while charged:
            res_id, (expiry, _) = next(iter(charged.items()))
            if expiry > now:
                break
            del charged[res_id]

    @staticmethod
    def _roll(slot: _Slot, e: Entry, now: float) -> None:
        if not e.rolling_bucket_s or not slot.buckets:
            return
        new_lo = math.floor(now / e.rolling_bucket_s) - e.rolling_buckets
        if slot.lo >= new_lo:
            return
        if new_lo - slot.lo > len(slot.buckets):
            old = [i for i in slot.buckets if i < new_lo]
        else:
            old = [i for i in range(slot.lo, new_lo) if i in slot.buckets]
        for i in old:
            vec = slot.buckets.pop(i)
            for d in range(NDIMS):
                slot.spent[d] -= vec[d]
        slot.lo = new_lo

    def _sweep(self, now: float) -> None:
        self._next_sweep = now + _SWEEP_EVERY_S
        for key, (slot, e) in list(self._slots.items()):
            if _dead(slot, e, now):
                del self._slots[key]
