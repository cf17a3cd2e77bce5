"""The admin API, driven in-process through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.limits.conftest import wait_until
from tokenfuse.config import BudgetConfig
from tokenfuse.control.admin import AdminApp
from tokenfuse.control.killswitch import KillSwitches, KillSwitchStore
from tokenfuse.control.runtime import ControlWatcher, RuntimeBudgetStore
from tokenfuse.limits.budgets import BudgetStatus
from tokenfuse.limits.context import RequestContext

TOKEN = "s3cret-admin-token"
BASE = "http://gateway/_tokenfuse/admin"
CTX = RequestContext("alice-droid", "alice", "droid", "s-1", "claude-opus-4-1", "anthropic")


class StubLimiter:
    """The limiter's read side and its run-time budget sink, with fixed figures."""

    def __init__(self) -> None:
        self.runtime: list[BudgetConfig] = []

    def set_runtime_budgets(self, budgets: list[BudgetConfig]) -> None:
        self.runtime = budgets

    async def snapshot(self, now: float | None = None) -> list[BudgetStatus]:
        start = datetime(2026, 11, 1, tzinfo=UTC)
        config = BudgetStatus(
            name="alice-monthly", window="month", window_start=start, resets_at=datetime(2026, 12, 1, tzinfo=UTC),
            limit_usd=Decimal("200"), limit_requests=None, limit_tokens={},
            spent_usd=Decimal("150.000000001"), spent_requests=12, spent_tokens={"output": 5},
            reserved_usd=Decimal("0.5"), reserved_requests=1, reserved_tokens={"output": 4096},
            percent=75.0, source="config",
        )  # fmt: skip
        runtime = [
            BudgetStatus(
                name=b.name,
                window=str(b.window),
                window_start=None,
                resets_at=None,
                limit_usd=b.limit.usd,
                limit_requests=b.limit.requests,
                limit_tokens=dict(b.limit.tokens or {}),
                spent_usd=Decimal(0),
                spent_requests=0,
                spent_tokens={},
                reserved_usd=Decimal(0),
                reserved_requests=0,
                reserved_tokens={},
                percent=0.0,
                source="runtime",
            )
            for b in self.runtime
        ]
        return [config, *runtime]

    async def session_snapshot(self, limit: int = 10) -> list[dict[str, Any]]:
        return [{"session": "s-1", "requests": 199, "max_requests": 200, "usd": Decimal("1.5")}]


class Harness:
    def __init__(self, tmp_path: Path, token: str | None) -> None:
        url = f"sqlite:///{tmp_path / 'store.db'}"
        self.kills = KillSwitches()
        self.limiter = StubLimiter()
        # A poll far longer than any test: only the admin API's refresh can apply writes here.
        self.watcher = ControlWatcher(url, self.kills, self.limiter, poll_ms=600_000)
        self.store = KillSwitchStore(url)
        self.budgets = RuntimeBudgetStore(url)
        self.app = AdminApp(token, self.store, self.watcher, self.limiter, self.budgets)


Run = Callable[[Callable[[httpx.AsyncClient, Harness], Awaitable[None]]], None]


@pytest.fixture
def run(tmp_path: Path) -> Run:
    def go(body: Callable[[httpx.AsyncClient, Harness], Awaitable[None]], token: str | None = TOKEN) -> None:
        async def main() -> None:
            h = Harness(tmp_path, token)
            await h.watcher.start()
            try:
                async with httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=h.app), headers={"authorization": f"Bearer {TOKEN}"}
                ) as client:
                    await body(client, h)
            finally:
                await h.watcher.stop()
                h.store.close()
                h.budgets.close()

        asyncio.run(main())

    return go


def test_no_token_configured_means_every_call_is_403(tmp_path: Path) -> None:
    async def main() -> None:
        url = f"sqlite:///{tmp_path / 's.db'}"
        app = AdminApp(None, KillSwitchStore(url), None, None, RuntimeBudgetStore(url))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app)) as client:
            for method, path in [("GET", "/status"), ("POST", "/kills"), ("GET", "/budgets")]:
                r = await client.request(method, BASE + path, headers={"authorization": "Bearer anything"})
                assert r.status_code == 403
                assert "server.admin_token" in r.json()["error"]["message"]

    asyncio.run(main())


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN}x"},
    ],
)
def test_wrong_or_missing_token_is_401_and_writes_nothing(run: Run, headers: dict[str, str]) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        client.headers.pop("authorization")
        r = await client.post(BASE + "/kills", json={"scope": "all"}, headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert h.store.list() == []

    run(body)


def test_token_compared_in_constant_time(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)

    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        assert (await client.get(BASE + "/kills")).status_code == 200
        assert (
            await client.get(BASE + "/kills", headers={"authorization": "Bearer nope"})
        ).status_code == 401

    run(body)
    assert seen == [(TOKEN.encode(), TOKEN.encode()), (b"nope", TOKEN.encode())]


def test_kill_and_revive_apply_to_this_replica_at_once(run: Run) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        r = await client.post(BASE + "/kills", json={"scope": "workflow", "value": "droid", "reason": "loop"})
        assert r.status_code == 201
        assert r.json()["kill_switch"]["scope"] == "workflow"
        hit = h.kills.check(CTX)
        assert hit is not None and hit.reason == "loop"
        listed = (await client.get(BASE + "/kills")).json()["kill_switches"]
        assert [(s["scope"], s["value"], s["reason"]) for s in listed] == [("workflow", "droid", "loop")]

        r = await client.request("DELETE", BASE + "/kills", json={"scope": "workflow", "value": "droid"})
        assert r.status_code == 200
        assert h.kills.check(CTX) is None
        r = await client.request("DELETE", BASE + "/kills", json={"scope": "workflow", "value": "droid"})
        assert r.status_code == 404

        await client.post(BASE + "/kills", json={"scope": "all", "reason": "incident"})
        assert h.kills.check(CTX) is not None
        r = await client.post(BASE + "/kills/revive", json={"scope": "all"})
        assert r.status_code == 200
        assert h.kills.check(CTX) is None

    run(body)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"value": "droid"}, "scope is required"),
        ({"scope": "team", "value": "x"}, "unknown kill-switch scope"),
        ({"scope": "workflow"}, "needs a value"),
        ({"scope": "workflow", "value": 3}, "value must be a string"),
        ({"scope": "workflow", "value": "x", "reason": ["a"]}, "reason must be a string"),
    ],
)
def test_bad_kill_requests_are_400(run: Run, payload: dict[str, Any], message: str) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        r = await client.post(BASE + "/kills", json=payload)
        assert r.status_code == 400
        assert message in r.json()["error"]["message"]
        assert h.store.list() == []

    run(body)


def test_non_json_body_is_400(run: Run) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        r = await client.post(BASE + "/kills", content=b"scope=all")
        assert r.status_code == 400
        r = await client.post(BASE + "/kills", json=["all"])
        assert r.status_code == 400

    run(body)


def test_budgets_add_list_replace_remove(run: Run) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        spec = {
            "name": "opus-hour",
            "match": {"model": "*opus*"},
            "window": "rolling:1h",
            "limit": {"usd": "2.50"},
        }
        r = await client.post(BASE + "/budgets", json=spec)
        assert r.status_code == 201, r.text
        assert [b.name for b in h.limiter.runtime] == ["opus-hour"]
        assert h.limiter.runtime[0].limit.usd == Decimal("2.50")
        listed = (await client.get(BASE + "/budgets")).json()["budgets"]
        assert listed[0]["limit"]["usd"] == "2.50" and listed[0]["window"] == {"rolling": "1h"}

        r = await client.post(BASE + "/budgets", json={**spec, "limit": {"requests": 5}})
        assert r.status_code == 200 and r.json()["created"] is False
        assert h.limiter.runtime[0].limit.requests == 5

        assert (await client.delete(BASE + "/budgets/opus-hour")).status_code == 200
        assert h.limiter.runtime == []
        assert (await client.delete(BASE + "/budgets/opus-hour")).status_code == 404

    run(body)


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        ({"name": "x", "limit": {"usd": "-1"}}, "limit.usd"),
        ({"name": "x", "limit": {}}, "limit"),
        ({"name": "x", "limit": {"tokens": {"outputs": 5}}}, "limit.tokens"),
        ({"name": "x", "window": "fortnight", "limit": {"usd": 1}}, "window"),
        ({"name": "x", "match": {"tenant": "a"}, "limit": {"usd": 1}}, "match.tenant"),
        ({"limit": {"usd": 1}}, "name"),
    ],
)
def test_invalid_budget_is_400_naming_the_field(run: Run, spec: dict[str, Any], path: str) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        r = await client.post(BASE + "/budgets", json=spec)
        assert r.status_code == 400
        assert f"invalid budget: {path}" in r.json()["error"]["message"]
        assert h.budgets.list() == []

    run(body)


def test_budget_named_like_a_config_budget_is_409(run: Run) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        r = await client.post(BASE + "/budgets", json={"name": "alice-monthly", "limit": {"usd": 1}})
        assert r.status_code == 409
        assert h.budgets.list() == []

    run(body)


def test_status_serialises_decimals_as_strings(run: Run) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        await client.post(BASE + "/kills", json={"scope": "model", "value": "*opus*"})
        data = (await client.get(BASE + "/status")).json()
        b = data["budgets"][0]
        assert b["name"] == "alice-monthly"
        assert b["spent_usd"] == "150.000000001" and b["limit_usd"] == "200" and b["reserved_usd"] == "0.5"
        assert b["resets_at"] == "2026-12-01T00:00:00+00:00"
        assert b["reserved_tokens"] == {"output": 4096}
        assert [s["value"] for s in data["kill_switches"]] == ["*opus*"]
        assert data["sessions"][0]["usd"] == "1.5"
        assert data["guards"] == []  # no gateway guards wired into this harness
        h.app.guard_findings = lambda: [{"guard": "loop", "subject": "session s1"}]
        assert (await client.get(BASE + "/status")).json()["guards"][0]["guard"] == "loop"

    run(body)


def test_unknown_path_and_method(run: Run) -> None:
    async def body(client: httpx.AsyncClient, h: Harness) -> None:
        assert (await client.get(BASE + "/nope")).status_code == 404
        r = await client.put(BASE + "/kills", json={})
        assert r.status_code == 405 and "GET, POST, DELETE" in r.headers["allow"]

    run(body)


def test_with_the_real_limiter_runtime_budgets_enforce_and_show_reservations(tmp_path: Path) -> None:
    from tokenfuse.config import Config
    from tokenfuse.limits.bounds import Bound
    from tokenfuse.limits.limiter import Limiter

    url = f"sqlite:///{tmp_path / 'store.db'}"

    async def main() -> None:
        limiter = await Limiter.create(Config.model_validate({"store": url, "admission_wait_ms": 0}), rebuild=False)
        kills = KillSwitches()
        watcher = ControlWatcher(url, kills, limiter, poll_ms=600_000)
        await watcher.start()
        store, budgets = KillSwitchStore(url), RuntimeBudgetStore(url)
        app = AdminApp(TOKEN, store, watcher, limiter, budgets)
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), headers={"authorization": f"Bearer {TOKEN}"}
            ) as client:
                spec = {
                    "name": "alice-hour",
                    "match": {"principal": "alice"},
                    "window": "hour",
                    "limit": {"usd": "1"},
                }
                assert (await client.post(BASE + "/budgets", json=spec)).status_code == 201
                held = await limiter.reserve(CTX, Bound(Decimal("0.75"), {}))
                assert held.ok
                refused = await limiter.reserve(CTX, Bound(Decimal("0.5"), {}))
                assert not refused.ok and refused.refusal is not None
                assert refused.refusal.budget == "alice-hour"
                [b] = (await client.get(BASE + "/status")).json()["budgets"]
                assert (b["name"], b["source"], b["reserved_usd"], b["spent_usd"]) == (
                    "alice-hour",
                    "runtime",
                    "0.75",
                    "0",
                )
                assert (await client.delete(BASE + "/budgets/alice-hour")).status_code == 200
                assert (await limiter.reserve(CTX, Bound(Decimal("0.5"), {}))).ok
        finally:
            await watcher.stop()
            await limiter.close()
            store.close()
            budgets.close()

    asyncio.run(main())


# -- kill switches during a store outage -----------------------------------------


async def test_kill_during_a_store_outage_applies_here_and_is_persisted_when_the_store_returns(pg_url: str) -> None:
    from tests.limits.flaky_tcp import FlakyTCP

    proxy = FlakyTCP("127.0.0.1", 5432)
    url = proxy.url_for(pg_url)
    kills, other_kills = KillSwitches(), KillSwitches()
    watcher = ControlWatcher(url, kills, None, poll_ms=50)
    other = ControlWatcher(pg_url, other_kills, None, poll_ms=50)  # another replica, store reachable
    store, budgets = KillSwitchStore(url), RuntimeBudgetStore(url)
    app = AdminApp(TOKEN, store, watcher, None, budgets)
    bob = RequestContext("bob-batch", "bob", "batch", None, "gpt-4o", "openai")
    try:
        await watcher.start()
        await other.start()
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), headers={"authorization": f"Bearer {TOKEN}"}
        ) as client:
            await client.post(BASE + "/kills", json={"scope": "principal", "value": "bob", "reason": "before"})
            assert await wait_until(lambda: other_kills.check(bob) is not None)
            proxy.down()

            r = await client.post(BASE + "/kills", json={"scope": "workflow", "value": "droid", "reason": "loop"})
            assert r.status_code == 202, r.text
            payload = r.json()
            assert payload["persisted"] is False
            message = payload["message"]
            assert message.startswith("applied on this gateway; not yet persisted: the store is unreachable (")
            assert "other replicas will apply it when the store is reachable" in message
            hit = kills.check(CTX)
            assert hit is not None and hit.reason == "loop"  # at once, on this replica
            assert other_kills.check(CTX) is None  # the other replica cannot know yet

            r = await client.request("DELETE", BASE + "/kills", json={"scope": "principal", "value": "bob"})
            assert r.status_code == 202 and r.json()["persisted"] is False
            assert kills.check(bob) is None

            # A poll that fails keeps the pending changes applied.
            await asyncio.sleep(0.2)
            assert kills.check(CTX) is not None and kills.check(bob) is None

            listed = (await client.get(BASE + "/kills")).json()
            assert "the store is unreachable" in listed["store_error"]
            assert [(s["scope"], s["value"]) for s in listed["kill_switches"]] == [("workflow", "droid")]
            assert {(c["action"], c["value"]) for c in listed["not_persisted"]} == {
                ("kill", "droid"),
                ("revive", "bob"),
            }

            r = await client.request("DELETE", BASE + "/kills", json={"scope": "session", "value": "never-killed"})
            assert r.status_code == 503 and "nothing to lift" in r.json()["error"]["message"]

            proxy.up()
            assert await wait_until(lambda: not watcher.pending())
            assert await wait_until(lambda: other_kills.check(CTX) is not None)  # propagated
            assert await wait_until(lambda: other_kills.check(bob) is None)
            assert kills.check(CTX) is not None and kills.check(bob) is None
            listed = (await client.get(BASE + "/kills")).json()
            assert "store_error" not in listed and listed["not_persisted"] == []
    finally:
        await watcher.stop()
        await other.stop()
        await app.close()
        proxy.close()


async def test_kill_without_a_watcher_and_no_store_is_503_saying_nothing_was_set() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"
    app = AdminApp(TOKEN, KillSwitchStore(url), None, None, RuntimeBudgetStore(url))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), headers={"authorization": f"Bearer {TOKEN}"}
    ) as client:
        r = await client.post(BASE + "/kills", json={"scope": "all"})
        assert r.status_code == 503
        assert r.json()["error"]["message"].startswith("the kill switch was not set: the store is unreachable")
    await app.close()


async def test_a_model_kill_through_the_api_is_stored_in_canonical_form(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    kills = KillSwitches()
    watcher = ControlWatcher(url, kills, None, poll_ms=600_000)
    app = AdminApp(TOKEN, KillSwitchStore(url), watcher, None, RuntimeBudgetStore(url))
    await watcher.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), headers={"authorization": f"Bearer {TOKEN}"}
        ) as client:
            r = await client.post(BASE + "/kills", json={"scope": "model", "value": "US.Anthropic.Claude-Opus-4-6-v1"})
            assert r.status_code == 201 and r.json()["kill_switch"]["value"] == "claude-opus-4-6"
            opus = RequestContext("k", "p", "w", None, "CLAUDE-OPUS-4-6", "anthropic")
            assert kills.check(opus) is not None
            r = await client.request("DELETE", BASE + "/kills", json={"scope": "model", "value": "claude-opus-4-6 "})
            assert r.status_code == 200 and kills.check(opus) is None
    finally:
        await watcher.stop()
        await app.close()
