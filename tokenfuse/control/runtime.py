"""Run-time budgets in the shared store, and the watcher that keeps a gateway
in step with the store's kill switches, run-time budgets and run-time keys.

One background task polls these tables every ``kill_poll_ms`` so that a switch
or budget written anywhere (CLI, another replica's admin API) takes effect
here within one poll interval, and a restart keeps them.

A kill switch must work exactly when things are broken, the store included.
When the store cannot take a switch (or a revive), the admin API hands it to
:meth:`ControlWatcher.hold`: it applies on this replica at once, sits in a
pending list that every read of the store is overlaid with, and is written to
the store by the next poll that reaches it; the other replicas then read it as
usual. Pending changes live in this process only: a restart during the outage
loses them, which the API answer says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from tokenfuse.aio import spawn
from tokenfuse.config import BudgetConfig
from tokenfuse.control.keys import RuntimeKeys, RuntimeKeyStore
from tokenfuse.control.keys import parse_rows as parse_key_rows
from tokenfuse.control.killswitch import KillSwitch, KillSwitches, KillSwitchStore, normalise
from tokenfuse.ledger.store import StoreConnection

log = logging.getLogger("tokenfuse.limits")


class RuntimeBudgetSink(Protocol):
    def set_runtime_budgets(self, budgets: list[BudgetConfig]) -> None: ...


def budget_spec(budget: BudgetConfig) -> str:
    return json.dumps(budget.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


class RuntimeBudgetStore:
    """The ``runtime_budgets`` table: name -> BudgetConfig as JSON."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = StoreConnection(url)

    def put(self, budget: BudgetConfig) -> bool:
        """Add or replace; True when the name was new."""
        p = self._store.p
        _, existing = self._store.execute(f"SELECT 1 FROM runtime_budgets WHERE name = {p}", (budget.name,))
        self._store.execute(
            f"INSERT INTO runtime_budgets (name, spec, created_ts) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, created_ts = excluded.created_ts",
            (budget.name, budget_spec(budget), time.time()),
        )
        return not existing

    def remove(self, name: str) -> bool:
        count, _ = self._store.execute(f"DELETE FROM runtime_budgets WHERE name = {self._store.p}", (name,))
        return count > 0

    def specs(self) -> list[tuple[str, str]]:
        _, rows = self._store.execute("SELECT name, spec FROM runtime_budgets ORDER BY name")
        return [(str(n), str(s)) for n, s in rows]

    def list(self) -> list[BudgetConfig]:
        return parse_specs(self.specs())

    def close(self) -> None:
        self._store.close()


def parse_specs(specs: list[tuple[str, str]]) -> list[BudgetConfig]:
    budgets: list[BudgetConfig] = []
    for name, spec in specs:
        try:
            budgets.append(BudgetConfig.model_validate_json(spec))
        except ValidationError as exc:
            # A row written by a newer/older tokenfuse must not stop the others.
            log.warning(
                "ignoring run-time budget %r: stored spec is not valid: %s", name, exc.errors()[0]["msg"]
            )
    return budgets


@dataclass(frozen=True)
class PendingChange:
    """A kill or revive applied here that the store has not taken yet."""

    scope: str
    value: str
    switch: KillSwitch | None  # None: a revive
    error: str  # why the store did not take it


class ControlWatcher:
    """Polls kill switches and run-time budgets and pushes them in memory."""

    def __init__(
        self,
        store_url: str,
        kills: KillSwitches,
        limiter: RuntimeBudgetSink | None,
        poll_ms: int,
        keys: RuntimeKeys | None = None,
    ) -> None:
        self.kills = kills
        self.limiter = limiter
        self.keys = keys
        self.poll_s = poll_ms / 1000
        self.kill_store = KillSwitchStore(store_url)
        self.budget_store = RuntimeBudgetStore(store_url)
        self.key_store = RuntimeKeyStore(store_url)
        self._last_keys: list[tuple[str, str, str]] | None = None
        self.refreshes = 0
        self._task: asyncio.Task[Any] | None = None
        self._refresh_lock = asyncio.Lock()
        self._last_specs: list[tuple[str, str]] | None = None
        self._failing = False
        self._stored: list[KillSwitch] = []  # the last kill switches read from the store
        self._pending: dict[tuple[str, str], PendingChange] = {}

    # -- changes the store could not take -------------------------------------

    def hold(self, scope: str, value: str | None, reason: str | None, error: str) -> KillSwitch:
        """Apply a kill switch on this replica now; persist it when the store answers."""
        scope, value = normalise(scope, value)
        switch = KillSwitch(scope, value, reason or None, time.time())
        self._pending[(scope, value)] = PendingChange(scope, value, switch, error)
        self._apply()
        log.error(
            "kill switch %s applied on this gateway only: the store did not take it (%s); "
            "it is persisted when the store answers",
            switch.describe(),
            error,
        )
        return switch

    def trip(self, scope: str, value: str | None, reason: str) -> KillSwitch:
        """A kill switch the gateway sets on its own: applied here now, persisted on the next poll."""
        scope, value = normalise(scope, value)
        switch = KillSwitch(scope, value, reason, time.time())
        self._pending[(scope, value)] = PendingChange(scope, value, switch, "set by the gateway")
        self._apply()
        log.error("kill switch %s set by the gateway: %s", switch.describe(), reason)
        return switch

    def hold_revive(self, scope: str, value: str | None, error: str) -> bool:
        """Lift a kill switch on this replica now; False when this replica does not apply it."""
        scope, value = normalise(scope, value)
        if not any((s.scope, s.value) == (scope, value) for s in self.kills.active()):
            return False
        self._pending[(scope, value)] = PendingChange(scope, value, None, error)
        self._apply()
        log.error(
            "kill switch %s=%s lifted on this gateway only: the store did not take it (%s)",
            scope,
            value,
            error,
        )
        return True

    def pending(self) -> list[PendingChange]:
        return list(self._pending.values())

    def _apply(self) -> None:
        merged = {(s.scope, s.value): s for s in self._stored}
        for key, change in self._pending.items():
            if change.switch is None:
                merged.pop(key, None)
            else:
                merged[key] = change.switch
        self.kills.replace(list(merged.values()))

    async def _persist_pending(self) -> None:
        for key, change in list(self._pending.items()):
            if change.switch is not None:
                s = change.switch
                await asyncio.to_thread(self.kill_store.set, s.scope, s.value, s.reason, s.created_ts)
            else:
                await asyncio.to_thread(self.kill_store.clear, change.scope, change.value)
            # A newer change to the same target may have arrived meanwhile; it stays pending.
            if self._pending.get(key) is change:
                del self._pending[key]
            what = (
                change.switch.describe() if change.switch else f"the revive of {change.scope}={change.value}"
            )
            log.warning("%s, applied here while the store was unreachable, is now persisted", what)

    # -- polling -----------------------------------------------------------------

    def _read(self) -> tuple[list[KillSwitch], list[tuple[str, str]], list[tuple[str, str, str]] | None]:
        keys = self.key_store.rows() if self.keys is not None else None
        return self.kill_store.list(), self.budget_store.specs(), keys

    async def refresh_now(self) -> None:
        """Persist pending changes, read the store once and apply it; raises if the store fails."""
        async with self._refresh_lock:
            if self._pending:
                await self._persist_pending()
            switches, specs, keys = await asyncio.to_thread(self._read)
            self._stored = switches
            self._apply()
            if self.limiter is not None and specs != self._last_specs:
                self.limiter.set_runtime_budgets(parse_specs(specs))
            self._last_specs = specs
            if self.keys is not None and keys is not None and keys != self._last_keys:
                self.keys.replace(parse_key_rows(keys))
                self._last_keys = keys
            self.refreshes += 1

    async def start(self) -> None:
        # The first read happens before start() returns, so a gateway never
        # serves a request without the switches that were already set.
        try:
            await self.refresh_now()
        except Exception as exc:
            self._failing = True
            log.error("cannot read kill switches from the store (%s); retrying every poll", exc)
        if self._task is None:
            self._task = spawn(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.refresh_now()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Keep the last known switches: clearing them because the store
                # blinked would silently revive killed traffic.
                if not self._failing:
                    log.error(
                        "cannot read kill switches from the store (%s); keeping the last known set%s",
                        exc,
                        f" and {len(self._pending)} change(s) not yet persisted" if self._pending else "",
                    )
                self._failing = True
            else:
                if self._failing:
                    log.warning("kill switches readable from the store again")
                self._failing = False

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self.kill_store.close)
        await asyncio.to_thread(self.budget_store.close)
        await asyncio.to_thread(self.key_store.close)
