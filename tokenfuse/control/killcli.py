"""`tokenfuse kill` and `tokenfuse revive`: write kill switches to the store.

The store is the source of truth, so this works whether or not a gateway is
running; running gateways pick the change up within ``kill_poll_ms``.

When the store cannot be used (the outage an operator is reacting to), the
command asks a running gateway's admin API instead (``--gateway URL``, else
the config's ``server`` address, with ``server.admin_token``): that gateway
applies the switch at once and persists it when the store is back. The exit
status is 0 only when the switch is applied somewhere.

A kill of a key, principal or workflow the config does not name is refused
(exit 2, with the close matches) unless ``--force``: a typo must not leave a
runaway running while the operator believes it stopped.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tokenfuse.config import Config, ConfigError, load_config
from tokenfuse.control.adminclient import admin_call, gateway_url
from tokenfuse.control.killswitch import KillSwitch, KillSwitchStore

GATEWAY_TIMEOUT_S = 10.0
_VALIDATED = ("key", "principal", "workflow")

_SCOPE_FLAGS = ("workflow", "key", "principal", "session", "model")


def _parser(command: str) -> argparse.ArgumentParser:
    verb = "refuse" if command == "kill" else "stop refusing"
    p = argparse.ArgumentParser(
        prog=f"tokenfuse {command}",
        description=f"{verb.capitalize()} traffic matching a scope, on every gateway sharing the config's store.",
    )
    p.add_argument("--config", required=True, help="path to tokenfuse.yaml (its `store` holds the switches)")
    target = p.add_mutually_exclusive_group()
    for flag in _SCOPE_FLAGS:
        hint = "GLOB" if flag == "model" else flag.upper()
        target.add_argument(
            f"--{flag}", metavar=hint, help=f"{verb} this {flag}" + (" (glob)" if flag == "model" else "")
        )
    target.add_argument("--all", action="store_true", help=f"{verb} all traffic")
    target.add_argument("--list", action="store_true", help="list active kill switches")
    if command == "kill":
        p.add_argument("--reason", help="shown to refused callers and in `tokenfuse status`")
        p.add_argument(
            "--force",
            action="store_true",
            help="kill a key/principal/workflow the config does not name (e.g. one about to be added)",
        )
    p.add_argument(
        "--gateway",
        metavar="URL",
        help="gateway to ask when the store is unreachable (default: the config's server address); "
        "it needs server.admin_token",
    )
    return p


def _line(s: KillSwitch) -> str:
    when = datetime.fromtimestamp(s.created_ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    target = "all" if s.scope == "all" else f"{s.scope}={s.value}"
    return f"{target:<40} since {when}" + (f"  reason: {s.reason}" if s.reason else "")


def main(argv: list[str]) -> int:
    command = argv[0] if argv and argv[0] in ("kill", "revive") else "kill"
    args_in = argv[1:] if argv and argv[0] in ("kill", "revive") else argv
    parser = _parser(command)
    args = parser.parse_args(args_in)
    scope: str | None = None
    value: str | None = None
    if args.all:
        scope, value = "all", "*"
    else:
        for flag in _SCOPE_FLAGS:
            if getattr(args, flag) is not None:
                scope, value = flag, getattr(args, flag)
    if scope is None and not args.list:
        flags = ", ".join(f"--{f}" for f in (*_SCOPE_FLAGS, "all"))
        print(f"tokenfuse {command}: say what to {command}: one of {flags} (or --list)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse {command}: {exc}", file=sys.stderr)
        return 2
    if command == "kill" and scope in _VALIDATED and not args.force:
        assert value is not None
        unknown = unknown_target(config, args.config, scope, value)
        if unknown is not None:
            print(f"tokenfuse kill: {unknown}", file=sys.stderr)
            return 2
    store = KillSwitchStore(config.store)
    try:
        if args.list:
            switches = store.list()
            if not switches:
                print("no active kill switches")
            for s in switches:
                print(_line(s))
            return 0
        assert scope is not None
        if command == "kill":
            switch = store.set(scope, value, args.reason)
            print(
                f"killed {switch.describe()}; running gateways refuse it within "
                f"{config.kill_poll_ms} ms (store: {store_name(config.store)})"
            )
            return 0
        if store.clear(scope, value):
            target = "all traffic" if scope == "all" else f"{scope}={value}"
            print(f"revived {target}; running gateways admit it again within {config.kill_poll_ms} ms")
            return 0
        print(
            f"tokenfuse revive: no kill switch for {scope}={value}; `tokenfuse kill --config {args.config} --list` "
            "shows the active ones",
            file=sys.stderr,
        )
        return 1
    except ValueError as exc:
        print(f"tokenfuse {command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the store is unreachable or unwritable: ask a gateway
        store_error = f"cannot use the store {store_name(config.store)}: {first_line(exc)}"
        return _through_gateway(command, args, config, scope, value, store_error)
    finally:
        store.close()


def unknown_target(config: Config, path: str, scope: str, value: str) -> str | None:
    """Why a key/principal/workflow kill names nothing the config knows, or None when it does."""
    known = known_targets(config, path)[scope]
    if value in known:
        return None
    close = difflib.get_close_matches(value, sorted(known), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    listed = ", ".join(sorted(known)[:10]) or "none"
    return (
        f"no {scope} named {value!r} in {path} ({scope}s: {listed}); {hint}nothing was killed. "
        f"Check the name, or pass --force to kill a {scope} the config does not name yet"
    )


def known_targets(config: Config, path: str) -> dict[str, set[str]]:
    known: dict[str, set[str]] = {"key": set(), "principal": set(), "workflow": set()}
    entries: list[dict[str, Any]] = [k.model_dump() for k in config.keys]
    try:
        # Keys whose ${SECRET} is unset in this shell were dropped from `config`;
        # their names still count.
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        raw_keys = raw.get("keys") if isinstance(raw, dict) else None
        entries += [k for k in raw_keys or () if isinstance(k, dict)]
    except (OSError, yaml.YAMLError):
        pass
    entries += _runtime_key_entries(config.store)
    for k in entries:
        for field, scope in (("name", "key"), ("principal", "principal"), ("workflow", "workflow")):
            if isinstance(k.get(field), str):
                known[scope].add(k[field])
        if "workflow" not in k:
            known["workflow"].add("default")
    known["workflow"].update(config.sessions.workflows)
    for b in config.budgets:
        for scope in ("key", "principal", "workflow"):
            known[scope].update(b.match.values(scope) or ())
    return known


def _runtime_key_entries(store_url: str) -> list[dict[str, Any]]:
    """Keys created with `tokenfuse keys` (revoked ones too: their traffic may still be named)."""
    from tokenfuse.control.keys import RuntimeKeyStore
    from tokenfuse.ledger.schema import StoreURL

    if not StoreURL.parse(store_url).exists():
        return []
    store = RuntimeKeyStore(store_url)
    try:
        return [k.key.model_dump() for k in store.list(revoked=True)]
    except Exception:  # the store is down: validate against the config alone
        return []
    finally:
        store.close()


def _through_gateway(
    command: str,
    args: argparse.Namespace,
    config: Config,
    scope: str | None,
    value: str | None,
    store_error: str,
) -> int:
    url = gateway_url(config, args.gateway)
    token = config.server.admin_token
    nowhere = (
        "nothing was changed" if command == "revive" or args.list else "the kill switch is NOT set anywhere"
    )
    fix = (
        "fix the store, or pass --gateway URL of a running gateway whose server.admin_token is in this config"
    )
    if not token:
        print(
            f"tokenfuse {command}: {store_error}; no gateway can be asked either (server.admin_token is not set); "
            f"{nowhere}. To act: {fix}",
            file=sys.stderr,
        )
        return 1
    if args.list:
        method, body = "GET", None
    elif command == "kill":
        method, body = "POST", {"scope": scope, "value": value, "reason": args.reason}
    else:
        method, body = "DELETE", {"scope": scope, "value": value}
    try:
        status, payload = admin_call(url, token, "/kills", method, body, GATEWAY_TIMEOUT_S)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(
            f"tokenfuse {command}: {store_error}; and no gateway answered at {url} ({reason}); {nowhere}. "
            f"To act: {fix}",
            file=sys.stderr,
        )
        return 1
    message = str(payload.get("message") or payload.get("error", {}).get("message") or "")
    if status >= 300:
        print(
            f"tokenfuse {command}: {store_error}; the gateway at {url} answered {status}: {message}",
            file=sys.stderr,
        )
        return 1
    print(f"tokenfuse {command}: {store_error}; asked the gateway at {url} instead", file=sys.stderr)
    if args.list:
        if payload.get("store_error"):
            print(f"({payload['store_error']})", file=sys.stderr)
        rows = [
            KillSwitch(s["scope"], s["value"], s.get("reason"), float(s["created_ts"]))
            for s in payload.get("kill_switches", [])
        ]
        if not rows:
            print("no active kill switches on that gateway")
        for s in rows:
            print(_line(s))
        return 0
    target = "all traffic" if scope == "all" else f"{scope}={value}"
    verb = "killed" if command == "kill" else "revived"
    print(f"{verb} {target} on the gateway at {url}: {message or 'applied and persisted'}")
    return 0


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def store_name(url: str) -> str:
    # Never echo a password embedded in a PostgreSQL URL.
    head, sep, rest = url.partition("://")
    if "@" in rest:
        creds, _, host = rest.rpartition("@")
        return f"{head}{sep}{creds.split(':', 1)[0]}@{host}"
    return url
