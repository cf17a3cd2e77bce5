"""Kill switches: refuse every request matching a scope, on every replica.

Switches are rows in the shared store (:class:`KillSwitchStore`) so the CLI,
the admin API and every gateway agree on them and a restart keeps them. The
gateway never reads the store on the request path: a watcher copies the rows
into :class:`KillSwitches`, whose :meth:`KillSwitches.check` is a handful of
dict lookups.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from tokenfuse.ledger.store import StoreConnection
from tokenfuse.limits.context import RequestContext

SCOPES: tuple[str, ...] = ("key", "principal", "workflow", "session", "model", "all")
_FIELD_SCOPES: tuple[str, ...] = ("key", "principal", "workflow", "session", "model")
_GLOB_CHARS = frozenset("*?[")


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
    return scope, value.strip()


class KillSwitchStore:
    """Small synchronous access to the ``kill_switches`` table.

    Safe to share between threads (the watcher calls it through
    ``asyncio.to_thread``); one connection, serialised by a lock.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = StoreConnection(url)

    def set(self, scope: str, value: str | None, reason: str | None = None) -> KillSwitch:
        scope, value = normalise(scope, value)
        switch = KillSwitch(scope, value, reason or None, time.time())
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


class KillSwitches:
    """The in-memory copy the gateway checks on every request."""

    def __init__(self) -> None:
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
            elif s.scope == "model" and _GLOB_CHARS.intersection(s.value):
                globs.append((s.value, s))
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
                hit = values.get(value)
                if hit is not None:
                    return hit
        if index.model_globs:
            return self._glob(index, ctx.model)
        return None

    def _glob(self, index: _Index, model: str) -> KillSwitch | None:
        cache = self._glob_cache
        if model in cache:
            return cache[model]
        hit = next((s for pattern, s in index.model_globs if fnmatchcase(model, pattern)), None)
        if len(cache) < 10_000 and index is self._index:
            cache[model] = hit
        return hit

    def active(self) -> list[KillSwitch]:
        return list(self._index.switches)

    def __len__(self) -> int:
        return len(self._index.switches)
