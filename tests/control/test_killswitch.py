"""Kill switches: the store (SQLite and PostgreSQL) and the in-memory matcher."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfuse.control.killswitch import KillSwitch, KillSwitches, KillSwitchStore, normalise
from tokenfuse.limits.context import RequestContext


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


def test_model_globs_match_canonical_ids_so_case_does_not_matter() -> None:
    # Identities are lower-case, so a glob is too: `*Opus*` must not miss `claude-opus-4-1`.
    kills = KillSwitches()
    s = switch("model", "*Opus*")
    kills.replace([s])
    assert kills.check(ctx()) == s
    assert kills.check(ctx(model="CLAUDE-OPUS-4-1")) == s


SPELLINGS_OF_OPUS_4_6 = [
    "claude-opus-4-6",
    "CLAUDE-OPUS-4-6",
    "claude-opus-4-6 ",
    " Claude-Opus-4-6\t",
    "claude-opus-4-6@20260101",
    "claude%2Dopus-4-6",
    "anthropic.claude-opus-4-6-v1",
    "us.anthropic.claude-opus-4-6-v1",
    "global.anthropic.claude-opus-4-6-v1:0",
    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-opus-4-6-v1",
    "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-opus-4-6-v1",
    "ARN:AWS:BEDROCK:US-EAST-1::FOUNDATION-MODEL/ANTHROPIC.CLAUDE-OPUS-4-6-V1",
    "arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-opus-4-6-v1",
]


@pytest.mark.parametrize(
    "configured", ["claude-opus-4-6", "CLAUDE-OPUS-4-6", "us.anthropic.claude-opus-4-6-v1"]
)
@pytest.mark.parametrize("sent", SPELLINGS_OF_OPUS_4_6)
def test_a_model_switch_stops_every_spelling_of_the_model(configured: str, sent: str) -> None:
    kills = KillSwitches()
    s = switch("model", configured, "runaway")
    kills.replace([s])
    assert kills.check(ctx(model=sent)) == s
    assert kills.check(ctx(model="claude-opus-4-5")) is None
    assert kills.check(ctx(model="claude-opus-4-6-fast")) is None  # a different model, not a spelling


@pytest.mark.parametrize(
    "glob", ["claude-opus-4-6*", "*OPUS-4-6", "anthropic.claude-opus-*", "us.anthropic.*"]
)
def test_a_model_glob_is_matched_against_the_canonical_id(glob: str) -> None:
    kills = KillSwitches()
    s = switch("model", glob)
    kills.replace([s])
    for sent in SPELLINGS_OF_OPUS_4_6:
        assert kills.check(ctx(model=sent)) == s, sent
    assert kills.check(ctx(model="gpt-4o")) is None


def test_unpriced_names_are_matched_in_normalised_form() -> None:
    kills = KillSwitches()
    s = switch("model", "test-model")
    kills.replace([s])
    for sent in (
        "TEST-MODEL",
        " test-model ",
        "test-model-2024-01-01",
        "test-model@20240101",
        "test%2Dmodel",
    ):
        assert kills.check(ctx(model=sent)) == s, sent
    assert kills.check(ctx(model="test-model-2")) is None


def test_normalise_stores_model_switches_in_canonical_form() -> None:
    assert normalise("model", " US.Anthropic.Claude-Opus-4-6-v1 ") == ("model", "claude-opus-4-6")
    assert normalise("model", "claude-3-5-sonnet-latest") == ("model", "claude-3-5-sonnet")
    assert normalise("model", "*Opus*") == ("model", "*opus*")
    # Other scopes are names the operator chose: kept as written.
    assert normalise("workflow", " Droid ") == ("workflow", "Droid")


def test_an_oversized_model_name_is_matched_by_a_catch_all_glob_without_being_held() -> None:
    kills = KillSwitches()
    s = switch("model", "*")
    kills.replace([s])
    huge = "x" * 1_000_000
    assert kills.check(ctx(model=huge)) == s
    assert all(len(k) < 300 for k in kills._glob_cache)


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
