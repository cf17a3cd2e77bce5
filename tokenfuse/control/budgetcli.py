"""`tokenfuse budget add|list|remove`: run-time budgets in the shared store.

Run-time budgets sit beside the config file's budgets; every gateway sharing
the store enforces them within ``kill_poll_ms`` and a restart keeps them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pydantic import ValidationError

from tokenfuse.config import BudgetConfig, ConfigError, RollingWindow, load_config
from tokenfuse.control.admin import validation_message
from tokenfuse.control.killcli import first_line, store_name
from tokenfuse.control.runtime import RuntimeBudgetStore

MATCH_FIELDS = ("key", "principal", "workflow", "session", "model", "protocol", "team", "tags")


class UsageError(ValueError):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenfuse budget", description="Add, list or remove run-time budgets.")
    sub = p.add_subparsers(dest="action", metavar="{add,list,remove}")
    add = sub.add_parser("add", help="add or replace a run-time budget")
    add.add_argument("--config", required=True, help="path to tokenfuse.yaml (its `store` holds the budgets)")
    add.add_argument("--name", required=True)
    add.add_argument(
        "--match",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help=f"repeatable; FIELD is one of {', '.join(MATCH_FIELDS)} (model takes a glob, e.g. model='*opus*'); "
        "VALUE may list several, comma-separated (principal=alice,bob)",
    )
    add.add_argument(
        "--window",
        default="month",
        help="minute|hour|day|week|month|total or rolling:DURATION (e.g. rolling:1h)",
    )
    add.add_argument("--usd", help="spend limit in USD, e.g. 200")
    add.add_argument("--requests", type=int, help="request-count limit")
    add.add_argument(
        "--tokens",
        action="append",
        default=[],
        metavar="CLASS=N",
        help="repeatable; CLASS is input_uncached, cache_read, cache_write, output or total",
    )
    ls = sub.add_parser("list", help="list run-time budgets")
    ls.add_argument("--config", required=True)
    rm = sub.add_parser("remove", help="remove a run-time budget")
    rm.add_argument("--config", required=True)
    rm.add_argument("name")
    return p


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise UsageError(f"{flag} {item!r} must look like NAME=VALUE")
        out[k.strip()] = v.strip()
    return out


def budget_from_args(args: argparse.Namespace) -> BudgetConfig:
    match: dict[str, Any] = dict(_pairs(args.match, "--match"))
    for k, v in match.items():
        if "," in v:
            match[k] = [x.strip() for x in v.split(",") if x.strip()]
    for k in match:
        if k not in MATCH_FIELDS:
            raise UsageError(f"--match {k}=...: unknown field; use one of {', '.join(MATCH_FIELDS)}")
    tokens: dict[str, Any] = {}
    for k, v in _pairs(args.tokens, "--tokens").items():
        try:
            tokens[k] = int(v)
        except ValueError:
            raise UsageError(f"--tokens {k}={v}: the limit must be a whole number of tokens") from None
    limit: dict[str, Any] = {}
    if args.usd is not None:
        limit["usd"] = args.usd
    if args.requests is not None:
        limit["requests"] = args.requests
    if tokens:
        limit["tokens"] = tokens
    if not limit:
        raise UsageError("give at least one limit: --usd X, --requests N or --tokens CLASS=N")
    try:
        return BudgetConfig.model_validate(
            {"name": args.name, "match": match, "window": args.window, "limit": limit}
        )
    except ValidationError as exc:
        raise UsageError(validation_message(exc)) from None


def _describe(b: BudgetConfig) -> str:
    window = f"rolling:{b.window.rolling}" if isinstance(b.window, RollingWindow) else b.window
    match = " ".join(f"{k}={v}" for k, v in b.match.model_dump(exclude_none=True).items()) or "(all traffic)"
    limits = []
    if b.limit.usd is not None:
        limits.append(f"usd={b.limit.usd:f}")
    if b.limit.requests is not None:
        limits.append(f"requests={b.limit.requests}")
    limits += [f"tokens.{k}={n}" for k, n in (b.limit.tokens or {}).items()]
    return f"{b.name:<24} window={window:<12} {' '.join(limits):<32} match: {match}"


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.action is None:
        print(
            "tokenfuse budget: say what to do: add, list or remove (see tokenfuse budget --help)",
            file=sys.stderr,
        )
        return 2
    try:
        config = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse budget: {exc}", file=sys.stderr)
        return 2
    store = RuntimeBudgetStore(config.store)
    try:
        if args.action == "add":
            budget = budget_from_args(args)
            if any(b.name == budget.name for b in config.budgets):
                raise UsageError(
                    f"budget {budget.name!r} is defined in {config.source}; pick another name or edit the file"
                )
            created = store.put(budget)
            verb = "added" if created else "replaced"
            print(f"{verb} run-time budget {_describe(budget).strip()}")
            print(f"running gateways enforce it within {config.kill_poll_ms} ms")
        elif args.action == "list":
            budgets = store.list()
            if not budgets:
                print("no run-time budgets (budgets in the config file are listed by `tokenfuse status`)")
            for b in budgets:
                print(_describe(b))
        else:
            if not store.remove(args.name):
                print(f"tokenfuse budget: no run-time budget named {args.name!r}", file=sys.stderr)
                return 1
            print(f"removed run-time budget {args.name}")
        return 0
    except UsageError as exc:
        print(f"tokenfuse budget {args.action}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        print(
            f"tokenfuse budget: cannot use the store {store_name(config.store)}: {first_line(exc)}",
            file=sys.stderr,
        )
        return 1
    finally:
        store.close()
