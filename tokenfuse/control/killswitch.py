"""Kill switches: refuse every request matching a scope, on every replica.

Switches are rows in the shared store (:class:`KillSwitchStore`) so the CLI,
the admin API and every gateway agree on them and a restart keeps them. The
gateway never reads the store on the request path: a watcher copies the rows
into :class:`KillSwitches`, whose :meth:`KillSwitches.check` is a handful of
dict lookups.

Model switches compare canonical model ids (`tokenfuse.pricing.identity`):
the value is canonicalised when the switch is set and again when it is
loaded, and the request's model before it is checked, so no spelling of a
killed model gets through.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from tokenfuse.ledger.store import StoreConnection
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import PriceBook, canonical_model, canonical_pattern
from tokenfuse.pricing.names import is_glob

SCOPES: tuple[str, ...] = ("key", "principal", "workflow", "session", "model", "all")
_FIELD_SCOPES: tuple[str, ...] = ("key", "principal", "workflow", "session", "model")


@dataclass(frozen=True)
class KillSwitch:
    scope: str
    value: str
    reason: str | None
    created_ts: float

    def describe(self) -> str:
        target = "all traffic" if self.scope == "all" else f"{self.scope}={self.value}"
        return f"{target} (reason: {self.reason})" if self.reason else target

    def as_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "value": self.value,
            "reason": self.reason,
            "created_ts": self.created_ts,
        }


def normalise(scope: str, value: str | None) -> tuple[str, str]:
    """Validate a (scope, value) pair as a user wrote it; raises ValueError with the fix."""
    if scope not in SCOPES:
        raise ValueError(f"unknown kill-switch scope {scope!r}; use one of {', '.join(SCOPES)}")
    if scope == "all":
        return "all", "*"
    if value is None or not value.strip():
        raise ValueError(f"a {scope} kill switch needs a value, e.g. --{scope} NAME")
    if scope == "model":
        return scope, canonical_pattern(value)
    return scope, value.strip()


class KillSwitchStore:
    """Small synchronous access to the ``kill_switches`` table.

    Safe to share between threads (the watcher calls it through
    ``asyncio.to_thread``); one connection, serialised by a lock.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = StoreConnection(url)

    def set(
        self, scope: str, value: str | None, reason: str | None = None, created_ts: float | None = None
    ) -> KillSwitch:
        scope, value = normalise(scope, value)
        switch = KillSwitch(scope, value, reason or None, time.time() if created_ts is None else created_ts)
        p = self._store.p
        self._store.execute(
            f"INSERT INTO kill_switches (scope, value, reason, created_ts) VALUES ({p}, {p}, {p}, {p}) "
            "ON CONFLICT (scope, value) DO UPDATE SET reason = excluded.reason, created_ts = excluded.created_ts",
            (switch.scope, switch.value, switch.reason, switch.created_ts),
        )
        return switch

    def clear(self, scope: str, value: str | None) -> bool:
        scope, value = normalise(scope, value)
        p = self._store.p
        count, _ = self._store.execute(
            f"DELETE FROM kill_switches WHERE scope = {p} AND value = {p}", (scope, value)
        )
        return count > 0

    def list(self) -> list[KillSwitch]:
        _, rows = self._store.execute(
            "SELECT scope, value, reason, created_ts FROM kill_switches ORDER BY created_ts"
        )
        return [KillSwitch(str(s), str(v), r, float(ts)) for s, v, r, ts in rows]

    def close(self) -> None:
        self._store.close()


@dataclass(frozen=True)
class _Index:
    everything: KillSwitch | None
    exact: tuple[tuple[str, dict[str, KillSwitch]], ...]  # only scopes that have switches
    model_globs: tuple[tuple[str, KillSwitch], ...]
    switches: tuple[KillSwitch, ...]


_EMPTY = _Index(None, (), (), ())
# Canonical ids are at most MAX_MODEL_NAME long, so this holds at most ~2.5 MB.
_GLOB_CACHE_SIZE = 10_000


class KillSwitches:
    """The in-memory copy the gateway checks on every request."""

    def __init__(self, prices: PriceBook | None = None) -> None:
        self._prices = prices
        self._index = _EMPTY
        # model name -> matching glob switch (or None); reset on every replace.
        self._glob_cache: dict[str, KillSwitch | None] = {}

    def replace(self, switches: list[KillSwitch]) -> None:
        everything: KillSwitch | None = None
        exact: dict[str, dict[str, KillSwitch]] = {}
        globs: list[tuple[str, KillSwitch]] = []
        for s in switches:
            if s.scope == "all":
                everything = s
            elif s.scope == "model":
                # Rows written by an older tokenfuse (or by hand) hold raw names.
                pattern = canonical_pattern(s.value, self._prices)
                if is_glob(pattern):
                    globs.append((pattern, s))
                else:
                    exact.setdefault("model", {})[pattern] = s
            elif s.scope in _FIELD_SCOPES:
                exact.setdefault(s.scope, {})[s.value] = s
        # One assignment, so a request never sees half an update.
        self._glob_cache = {}
        self._index = _Index(
            everything,
            tuple((sc, exact[sc]) for sc in _FIELD_SCOPES if sc in exact),
            tuple(globs),
            tuple(switches),
        )

    def check(self, ctx: RequestContext) -> KillSwitch | None:
        index = self._index
        if index.everything is not None:
            return index.everything
        for scope, values in index.exact:
            value = ctx.field(scope)
            if value is not None:
                if scope == "model":
                    value = canonical_model(value, self._prices)
                hit = values.get(value)
                if hit is not None:
                    return hit
        if index.model_globs:
            return self._glob(index, canonical_model(ctx.model, self._prices))
        return None

    def _glob(self, index: _Index, model: str) -> KillSwitch | None:
        cache = self._glob_cache
        if model in cache:
            return cache[model]
        hit = next((s for pattern, s in index.model_globs if fnmatchcase(model, pattern)), None)
        if len(cache) < _GLOB_CACHE_SIZE and index is self._index:
            cache[model] = hit
        return hit

    def active(self) -> list[KillSwitch]:
        return list(self._index.switches)

    def __len__(self) -> int:
        return len(self._index.switches)
