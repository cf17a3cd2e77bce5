"""Keys created at run time: the ``runtime_keys`` table and the set a gateway authenticates against.

A key is shown once, when it is created or rotated; the store keeps only its
SHA-256, as the config file's ``key_sha256`` does. Every gateway sharing the
store picks up a create, revoke or rotate within one ``kill_poll_ms`` (the
:class:`~tokenfuse.control.runtime.ControlWatcher` polls this table with the
kill switches). A revoked key stays in the table, marked, so ``list`` can show
when it stopped working and its name cannot silently come back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenfuse.config import KeyConfig
from tokenfuse.ledger.store import StoreConnection

log = logging.getLogger("tokenfuse.limits")

SECRET_PREFIX = "tfk-"
# What a run-time key may say about itself; its secret is never part of it.
SPEC_FIELDS = ("principal", "workflow", "team", "tags", "expires", "sessions")


class KeyStoreError(ValueError):
    """A key operation the store refused, phrased for the operator."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def key_spec(key: KeyConfig) -> str:
    data = key.model_dump(mode="json", include=set(SPEC_FIELDS), exclude_none=True)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def key_from_row(name: str, key_sha256: str, spec: str) -> KeyConfig:
    return KeyConfig.model_validate({**json.loads(spec), "name": name, "key_sha256": key_sha256})


@dataclass(frozen=True)
class StoredKey:
    key: KeyConfig
    created_ts: float
    revoked_ts: float | None

    def as_json(self) -> dict[str, Any]:
        k = self.key
        return {
            "name": k.name,
            "principal": k.principal,
            "workflow": k.workflow,
            "team": k.team,
            "tags": list(k.tags),
            "expires": k.expires.isoformat() if k.expires else None,
            "sessions": k.sessions.model_dump(mode="json") if k.sessions else None,
            "created": datetime.fromtimestamp(self.created_ts, UTC).isoformat(),
            "revoked": datetime.fromtimestamp(self.revoked_ts, UTC).isoformat() if self.revoked_ts else None,
        }


class RuntimeKeyStore:
    """The ``runtime_keys`` table: name, SHA-256 of the secret, spec as JSON, created and revoked times."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = StoreConnection(url)

    def create(self, key: KeyConfig, secret: str | None = None) -> str:
        """Store ``key`` (its secret fields ignored) under a new secret; return the secret."""
        secret = secret or new_secret()
        p = self._store.p
        _, rows = self._store.execute(f"SELECT revoked_ts FROM runtime_keys WHERE name = {p}", (key.name,))
        if rows and rows[0][0] is None:
            raise KeyStoreError(
                f"a run-time key named {key.name!r} already exists; pick another name, or `rotate` it for a new secret"
            )
        if rows:  # a revoked key of that name: the new one takes its place
            self._store.execute(f"DELETE FROM runtime_keys WHERE name = {p}", (key.name,))
        self._store.execute(
            f"INSERT INTO runtime_keys (name, key_sha256, spec, created_ts, revoked_ts) VALUES ({p}, {p}, {p}, {p}, NULL)",
            (key.name, digest(secret), key_spec(key), time.time()),
        )
        return secret

    def rotate(self, name: str, secret: str | None = None) -> str:
        """Give an active key a new secret; the old one stops working. Return the new secret."""
        secret = secret or new_secret()
        p = self._store.p
        count, _ = self._store.execute(
            f"UPDATE runtime_keys SET key_sha256 = {p}, created_ts = {p} WHERE name = {p} AND revoked_ts IS NULL",
            (digest(secret), time.time(), name),
        )
        if count == 0:
            raise KeyStoreError(f"no active run-time key named {name!r}; `tokenfuse keys list` shows them")
        return secret

    def revoke(self, name: str) -> bool:
        p = self._store.p
        count, _ = self._store.execute(
            f"UPDATE runtime_keys SET revoked_ts = {p} WHERE name = {p} AND revoked_ts IS NULL", (time.time(), name)
        )
        return count > 0

    def rows(self) -> list[tuple[str, str, str]]:
        """Active keys as (name, key_sha256, spec): what a gateway polls."""
        _, rows = self._store.execute(
            "SELECT name, key_sha256, spec FROM runtime_keys WHERE revoked_ts IS NULL ORDER BY name"
        )
        return [(str(n), str(d), str(s)) for n, d, s in rows]

    def list(self, *, revoked: bool = False) -> list[StoredKey]:
        where = "" if revoked else " WHERE revoked_ts IS NULL"
        _, rows = self._store.execute(
            f"SELECT name, key_sha256, spec, created_ts, revoked_ts FROM runtime_keys{where} ORDER BY name"
        )
        out = []
        for name, d, spec, created, revoked_ts in rows:
            try:
                key = key_from_row(str(name), str(d), str(spec))
            except (ValidationError, ValueError):
                continue
            out.append(StoredKey(key, float(created), None if revoked_ts is None else float(revoked_ts)))
        return out

    def close(self) -> None:
        self._store.close()


def parse_rows(rows: list[tuple[str, str, str]]) -> list[KeyConfig]:
    keys: list[KeyConfig] = []
    for name, d, spec in rows:
        try:
            keys.append(key_from_row(name, d, spec))
        except (ValidationError, ValueError) as exc:
            # A row written by another tokenfuse version must not stop the others.
            log.warning("ignoring run-time key %r: its stored spec is not valid (%s)", name, exc)
    return keys


class RuntimeKeys:
    """The run-time keys one gateway accepts, replaced whole by each poll that finds a change.

    Shared by every :class:`~tokenfuse.gateway.identity.KeyRing` the gateway
    builds, so a config reload keeps them.
    """

    def __init__(self, keys: list[KeyConfig] | None = None) -> None:
        self._by_digest: dict[str, KeyConfig] = {}
        self.replace(keys or [])

    def replace(self, keys: list[KeyConfig]) -> None:
        # One assignment: a request sees the old set or the new one, never half.
        self._by_digest = {d: k for k in keys if (d := k.digest()) is not None}

    def get(self, key_digest: str) -> KeyConfig | None:
        return self._by_digest.get(key_digest)

    def names(self) -> set[str]:
        return {k.name for k in self._by_digest.values()}

    def __len__(self) -> int:
        return len(self._by_digest)


def validate_new_key(key: KeyConfig, config_key_names: set[str]) -> None:
    if key.name in config_key_names:
        raise KeyStoreError(f"key {key.name!r} is defined in the config file; pick another name")
    if key.expires is not None and key.expires.timestamp() <= time.time():
        raise KeyStoreError(f"expires {key.expires.isoformat()} is in the past; give a future date or a duration")
