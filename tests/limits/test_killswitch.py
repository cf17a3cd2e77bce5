"""Kill switches: the store (SQLite and PostgreSQL) and the in-memory matcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfuse.limits.context import RequestContext
from tokenfuse.limits.killswitch import KillSwitch, KillSwitches, KillSwitchStore, normalise


def ctx(
    key: str = "alice-droid",
    principal: str = "alice",
    workflow: str = "droid",
    session: str | None = "s-1",
    model: str = "claude-opus-4-1",
    protocol: str = "anthropic",
) -> RequestContext:
    return RequestContext(key, principal, workflow, session, model, protocol)


def switch(scope: str, value: str, reason: str | None = None) -> KillSwitch:
    return KillSwitch(scope, value, reason, 0.0)


@pytest.mark.parametrize(
    ("scope", "value", "hit", "miss"),
    [
        ("key", "alice-droid", ctx(), ctx(key="bob-batch")),
        ("principal", "alice", ctx(), ctx(principal="bob")),
        ("workflow", "droid", ctx(), ctx(workflow="batch")),
        ("session", "s-1", ctx(), ctx(session="s-2")),
        ("model", "claude-opus-4-1", ctx(), ctx(model="claude-opus-4-10")),
        ("model", "*opus*", ctx(), ctx(model="gpt-4o")),
        ("model", "gpt-4?", ctx(model="gpt-4o"), ctx(model="gpt-4o-mini")),
    ],
)
def test_scope_matching(scope: str, value: str, hit: RequestContext, miss: RequestContext) -> None:
    kills = KillSwitches()
    s = switch(scope, value, "runaway")
    kills.replace([s])
    assert kills.check(hit) == s
    assert kills.check(miss) is None


def test_empty_admits_everything_and_all_refuses_everything() -> None:
    kills = KillSwitches()
    assert kills.check(ctx()) is None
    everything = switch("all", "*", "incident")
    kills.replace([switch("workflow", "other"), everything])
    assert kills.check(ctx()) == everything
    assert kills.check(ctx(principal="x", workflow="y", model="z", session=None)) == everything


def test_no_session_does_not_match_a_session_switch() -> None:
    kills = KillSwitches()
    kills.replace([switch("session", "s-1")])
    assert kills.check(ctx(session=None)) is None


def test_replace_revives_and_clears_the_glob_cache() -> None:
    kills = KillSwitches()
    kills.replace([switch("model", "*opus*")])
    assert kills.check(ctx()) is not None
    kills.replace([switch("model", "*sonnet*")])
    assert kills.check(ctx()) is None
    assert kills.check(ctx(model="claude-sonnet-4-5")) is not None
    kills.replace([])
    assert kills.check(ctx(model="claude-sonnet-4-5")) is None
    assert len(kills) == 0


def test_glob_is_case_sensitive_like_budget_matching() -> None:
    kills = KillSwitches()
    kills.replace([switch("model", "*Opus*")])
    assert kills.check(ctx()) is None


@pytest.mark.parametrize(
    ("scope", "value", "message"),
    [
        ("team", "x", "unknown kill-switch scope"),
        ("workflow", None, "needs a value"),
        ("workflow", "  ", "needs a value"),
    ],
)
def test_normalise_rejects(scope: str, value: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise(scope, value)


def test_normalise_all_ignores_value() -> None:
    assert normalise("all", None) == ("all", "*")
    assert normalise("all", "whatever") == ("all", "*")


def test_store_set_list_clear(store_url: str) -> None:
    store = KillSwitchStore(store_url)
    try:
        assert store.list() == []
        a = store.set("workflow", "droid", "runaway loop")
        store.set("all", None, None)
        listed = store.list()
        assert [(s.scope, s.value, s.reason) for s in listed] == [
            ("workflow", "droid", "runaway loop"),
            ("all", "*", None),
        ]
        assert listed[0].created_ts == a.created_ts
        # Setting again replaces the reason rather than adding a row.
        store.set("workflow", "droid", "still looping")
        assert sorted((s.scope, s.reason) for s in store.list()) == [
            ("all", None),
            ("workflow", "still looping"),
        ]
        assert store.clear("workflow", "droid") is True
        assert store.clear("workflow", "droid") is False
        assert store.clear("all", None) is True
        assert store.list() == []
    finally:
        store.close()


def test_two_stores_share_state(store_url: str) -> None:
    one, two = KillSwitchStore(store_url), KillSwitchStore(store_url)
    try:
        one.set("principal", "mallory", "compromised key")
        assert [(s.scope, s.value) for s in two.list()] == [("principal", "mallory")]
        assert two.clear("principal", "mallory")
        assert one.list() == []
    finally:
        one.close()
        two.close()


def test_store_rejects_bad_scope_before_writing(tmp_path: Path) -> None:
    store = KillSwitchStore(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(ValueError):
        store.set("team", "x", None)
    assert store.list() == []
    store.close()
