"""`tokenfuse kill` and `tokenfuse revive`: write kill switches to the store.

The store is the source of truth, so this works whether or not a gateway is
running; running gateways pick the change up within ``kill_poll_ms``.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from tokenfuse.config import ConfigError, load_config
from tokenfuse.limits.killswitch import KillSwitch, KillSwitchStore

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
        finally:
            store.close()
    except ConfigError as exc:
        print(f"tokenfuse {command}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"tokenfuse {command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the store is unreachable or unwritable
        print(
            f"tokenfuse {command}: cannot use the store {store_name(config.store)}: {first_line(exc)}",
            file=sys.stderr,
        )
        return 1


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
