"""Run-time keys: the store keeps only digests; the watcher hands them to the key ring; the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tokenfuse.cli import main as tokenfuse_main
from tokenfuse.config import Config, KeyConfig
from tokenfuse.control.keycli import parse_expiry
from tokenfuse.control.keys import KeyStoreError, RuntimeKeys, RuntimeKeyStore, digest, validate_new_key
from tokenfuse.control.killswitch import KillSwitches
from tokenfuse.control.runtime import ControlWatcher
from tokenfuse.gateway.identity import AuthError, KeyRing
from tokenfuse.ledger.schema import connect


def _key(name: str = "carol-k", **kw: object) -> KeyConfig:
    return KeyConfig.model_validate({"name": name, "principal": "carol", "key_sha256": "0" * 64, **kw})


def test_store_keeps_only_the_digest_and_lists_without_secrets(store_url: str) -> None:
    store = RuntimeKeyStore(store_url)
    try:
        secret = store.create(_key(team="platform", tags=["b", "a"], sessions={"max_requests": 5}))
        assert secret.startswith("tfk-") and len(secret) > 40
        conn = connect(store_url)
        rows = conn.execute("SELECT name, key_sha256, spec FROM runtime_keys").fetchall()
        conn.close()
        assert rows[0][1] == digest(secret)
        assert secret not in json.dumps([list(r) for r in rows])
        (listed,) = store.list()
        assert (listed.key.team, listed.key.tags, listed.key.sessions.max_requests) == ("platform", ["a", "b"], 5)
        assert "secret" not in listed.as_json()
        with pytest.raises(KeyStoreError, match="already exists"):
            store.create(_key())
    finally:
        store.close()


def test_rotate_and_revoke(sqlite_url: str) -> None:
    store = RuntimeKeyStore(sqlite_url)
    try:
        old = store.create(_key())
        new = store.rotate("carol-k")
        assert [r[1] for r in store.rows()] == [digest(new)] != [digest(old)]
        assert store.revoke("carol-k") is True
        assert store.revoke("carol-k") is False
        assert store.rows() == []
        assert [k.revoked_ts is not None for k in store.list(revoked=True)] == [True]
        with pytest.raises(KeyStoreError, match="no active run-time key"):
            store.rotate("carol-k")
        store.create(_key())  # a revoked name may be reused
        assert len(store.rows()) == 1
    finally:
        store.close()


def test_key_ring_consults_run_time_keys_and_expiry() -> None:
    runtime = RuntimeKeys()
    ring = KeyRing(Config(), runtime)
    with pytest.raises(AuthError):
        ring.identify({"authorization": "Bearer s3cret"}, "POST", "http://x/v1/chat/completions", b"")
    runtime.replace([_key(key_sha256=digest("s3cret"), team="platform")])
    ident = ring.identify({"authorization": "Bearer s3cret"}, "POST", "http://x", b"")
    assert (ident.key.name, ident.key.team) == ("carol-k", "platform")
    past = datetime.now(UTC) - timedelta(minutes=1)
    runtime.replace([_key(key_sha256=digest("s3cret"), expires=past.isoformat())])
    with pytest.raises(AuthError, match="expired"):
        ring.identify({"authorization": "Bearer s3cret"}, "POST", "http://x", b"")


def test_new_keys_are_checked_against_the_config_and_the_clock() -> None:
    with pytest.raises(KeyStoreError, match="defined in the config"):
        validate_new_key(_key("alice"), {"alice"})
    with pytest.raises(KeyStoreError, match="in the past"):
        validate_new_key(_key(expires="2001-01-01T00:00:00Z"), set())
    assert parse_expiry("2d", now=0).isoformat() == "1970-01-03T00:00:00+00:00"
    assert parse_expiry("2026-01-31").isoformat() == "2026-01-31T00:00:00+00:00"


async def test_watcher_applies_created_and_revoked_keys(sqlite_url: str) -> None:
    runtime = RuntimeKeys()
    watcher = ControlWatcher(sqlite_url, KillSwitches(), None, poll_ms=600_000, keys=runtime)
    store = RuntimeKeyStore(sqlite_url)
    try:
        await watcher.start()
        assert len(runtime) == 0
        secret = store.create(_key())
        await watcher.refresh_now()
        assert runtime.get(digest(secret)) is not None
        store.revoke("carol-k")
        await watcher.refresh_now()
        assert runtime.get(digest(secret)) is None
    finally:
        await watcher.stop()
        store.close()


def test_cli_create_list_rotate_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tokenfuse.yaml"
    cfg.write_text(
        f"store: sqlite:///{tmp_path / 'l.db'}\n"
        "keys:\n  - {name: alice-droid, key: s1, principal: alice}\n"
    )
    c = str(cfg)
    assert tokenfuse_main(["keys", "create", "--config", c, "--name", "carol-k", "--principal", "carol",
                           "--team", "platform", "--tag", "batch", "--expires", "30d", "--max-usd", "2.5",
                           "--json"]) == 0
    secret = json.loads(capsys.readouterr().out)["secret"]
    store = RuntimeKeyStore(f"sqlite:///{tmp_path / 'l.db'}")
    assert [r[1] for r in store.rows()] == [digest(secret)]
    store.close()
    assert tokenfuse_main(["keys", "list", "--config", c]) == 0
    line = capsys.readouterr().out
    assert "carol-k" in line and "team=platform" in line and "tags=batch" in line and "session.max_usd=2.5" in line
    assert secret not in line
    assert tokenfuse_main(["keys", "create", "--config", c, "--name", "alice-droid", "--principal", "x"]) == 2
    assert "defined in the config" in capsys.readouterr().err
    assert tokenfuse_main(["keys", "rotate", "--config", c, "carol-k"]) == 0
    assert "new secret (shown once)" in capsys.readouterr().out
    assert tokenfuse_main(["keys", "revoke", "--config", c, "carol-k"]) == 0
    assert tokenfuse_main(["keys", "revoke", "--config", c, "carol-k"]) == 1
    assert "no active run-time key" in capsys.readouterr().err
    assert tokenfuse_main(["keys", "list", "--config", c, "--all"]) == 0
    assert "REVOKED" in capsys.readouterr().out


def test_kill_accepts_a_run_time_key_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "tokenfuse.yaml"
    cfg.write_text(f"store: sqlite:///{tmp_path / 'l.db'}\n")
    assert tokenfuse_main(["kill", "--config", str(cfg), "--key", "carol-k"]) == 2  # unknown yet
    assert tokenfuse_main(["keys", "create", "--config", str(cfg), "--name", "carol-k", "--principal", "carol"]) == 0
    assert tokenfuse_main(["kill", "--config", str(cfg), "--key", "carol-k"]) == 0
    assert tokenfuse_main(["kill", "--config", str(cfg), "--principal", "carol"]) == 0
    assert "killed" in capsys.readouterr().out
