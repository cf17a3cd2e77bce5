"""`tokenfuse keys create|list|revoke|rotate`: API keys at run time, in the shared store.

Every gateway sharing the config's store accepts a created key, and refuses a
revoked one, within ``kill_poll_ms``; no restart or reload is needed. The
secret is printed once; the store keeps only its SHA-256.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from tokenfuse.config import ConfigError, KeyConfig, load_config, parse_duration
from tokenfuse.control.admin import validation_message
from tokenfuse.control.keys import KeyStoreError, RuntimeKeyStore, StoredKey, validate_new_key
from tokenfuse.control.killcli import first_line, known_targets, store_name


class UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenfuse keys",
        description="Create, list, revoke or rotate API keys at run time (no restart; every gateway sharing "
        "the store sees the change within kill_poll_ms).",
    )
    sub = p.add_subparsers(dest="action", metavar="{create,list,revoke,rotate}")
    create = sub.add_parser("create", help="create a key and print its secret once")
    create.add_argument("--config", required=True, help="path to tokenfuse.yaml (its `store` holds the keys)")
    create.add_argument("--name", required=True, help="the key's name (in the ledger as key_name)")
    create.add_argument("--principal", required=True, help="who the key belongs to, e.g. alice")
    create.add_argument("--workflow", default="default", help="the workflow it is for (default: default)")
    create.add_argument("--team", help="the team it belongs to (budgets can match `team`)")
    create.add_argument("--tag", action="append", default=[], help="repeatable; budgets can match `tags`")
    create.add_argument(
        "--expires", metavar="WHEN", help="a duration from now (30d, 12h) or a UTC date/datetime (2026-01-31)"
    )
    create.add_argument("--max-requests", type=int, help="per-session cap on requests for this key")
    create.add_argument("--max-usd", help="per-session cap on spend in USD for this key")
    create.add_argument("--idle-expiry", help="a session ends after this long idle (default 1h)")
    create.add_argument("--json", action="store_true", help="print the key and secret as JSON")
    ls = sub.add_parser("list", help="list run-time keys (never their secrets)")
    ls.add_argument("--config", required=True)
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.add_argument("--json", action="store_true", help="print JSON")
    rv = sub.add_parser("revoke", help="stop a key working")
    rv.add_argument("--config", required=True)
    rv.add_argument("name")
    rt = sub.add_parser("rotate", help="give a key a new secret (printed once); the old one stops working")
    rt.add_argument("--config", required=True)
    rt.add_argument("name")
    rt.add_argument("--json", action="store_true", help="print the new secret as JSON")
    return p


def parse_expiry(text: str, now: float | None = None) -> datetime:
    t = time.time() if now is None else now
    if re.fullmatch(r"\s*\d+\s*[smhdw]\s*", text):
        return datetime.fromtimestamp(t + parse_duration(text), UTC)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--expires {text!r}: give a duration from now (30d, 12h) or a UTC date/datetime (2026-01-31)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def key_from_args(args: argparse.Namespace) -> KeyConfig:
    spec: dict[str, Any] = {
        "name": args.name,
        "principal": args.principal,
        "workflow": args.workflow,
        "team": args.team,
        "tags": args.tag,
        # Placeholder: the store generates the secret and keeps only its digest.
        "key_sha256": "0" * 64,
    }
    if args.expires:
        spec["expires"] = parse_expiry(args.expires)
    sessions: dict[str, Any] = {}
    if args.max_requests is not None:
        sessions["max_requests"] = args.max_requests
    if args.max_usd is not None:
        sessions["max_usd"] = args.max_usd
    if args.idle_expiry is not None:
        sessions["idle_expiry"] = args.idle_expiry
    if sessions:
        spec["sessions"] = sessions
    try:
        return KeyConfig.model_validate(spec)
    except ValidationError as exc:
        raise UsageError(validation_message(exc)) from None


def describe(k: StoredKey) -> str:
    key = k.key
    parts = [f"{key.name:<24}", f"principal={key.principal}", f"workflow={key.workflow}"]
    if key.team:
        parts.append(f"team={key.team}")
    if key.tags:
        parts.append(f"tags={','.join(key.tags)}")
    if key.expires:
        parts.append(f"expires={key.expires.strftime('%Y-%m-%d %H:%M:%SZ')}")
    if key.sessions:
        caps = key.sessions
        if caps.max_requests is not None:
            parts.append(f"session.max_requests={caps.max_requests}")
        if caps.max_usd is not None:
            parts.append(f"session.max_usd={caps.max_usd:f}")
    if k.revoked_ts:
        parts.append(f"REVOKED {datetime.fromtimestamp(k.revoked_ts, UTC).strftime('%Y-%m-%d %H:%M:%SZ')}")
    return " ".join(parts)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.action is None:
        print("tokenfuse keys: say what to do: create, list, revoke or rotate (see tokenfuse keys --help)",
              file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse keys: {exc}", file=sys.stderr)
        return 2
    store = RuntimeKeyStore(config.store)
    poll = f"{config.kill_poll_ms} ms"
    try:
        if args.action == "create":
            key = key_from_args(args)
            validate_new_key(key, known_targets(config, args.config)["key"])
            secret = store.create(key)
            if args.json:
                print(json.dumps({"name": key.name, "secret": secret}))
            else:
                print(f"created key {key.name} for principal {key.principal}; running gateways accept it within {poll}")
                print(f"secret (shown once; the store keeps only its SHA-256): {secret}")
        elif args.action == "list":
            keys = store.list(revoked=args.all)
            if args.json:
                print(json.dumps({"keys": [k.as_json() for k in keys]}, indent=2))
            elif not keys:
                print("no run-time keys (keys in the config file are in the file)")
            for k in keys if not args.json else []:
                print(describe(k))
        elif args.action == "revoke":
            if not store.revoke(args.name):
                print(
                    f"tokenfuse keys revoke: no active run-time key named {args.name!r}; "
                    f"`tokenfuse keys list --config {args.config}` shows them (config-file keys are removed there)",
                    file=sys.stderr,
                )
                return 1
            print(f"revoked key {args.name}; running gateways refuse it within {poll}")
        else:
            secret = store.rotate(args.name)
            if args.json:
                print(json.dumps({"name": args.name, "secret": secret}))
            else:
                print(f"rotated key {args.name}; the old secret stops working within {poll}")
                print(f"new secret (shown once): {secret}")
        return 0
    except (UsageError, KeyStoreError) as exc:
        print(f"tokenfuse keys {args.action}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(f"tokenfuse keys: cannot use the store {store_name(config.store)}: {first_line(exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()
