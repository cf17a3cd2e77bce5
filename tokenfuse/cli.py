"""The `tokenfuse` command: a thin dispatcher.

Each subcommand lives in the module that owns its concept and exposes
``main(argv: list[str]) -> int``. Modules are imported only when their command
runs, so `tokenfuse serve` does not pay for DuckDB and `tokenfuse lint` does
not pay for the gateway.
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("tokenfuse.gateway.serve", "run the metering gateway"),
    "demo": ("tokenfuse.demo", "run the simulator and gateway and drive an agent session through all three SDKs"),
    "simulate": ("tokenfuse.simulator.cli", "run the provider simulator on its own"),
    "prices": ("tokenfuse.pricing.cli", "show what a model costs"),
    "usage": ("tokenfuse.ledger.cli", "print ledger totals"),
    "cache-report": ("tokenfuse.caching.report", "what prompt caching saved per workflow, and why it does not engage"),
    "status": ("tokenfuse.control.status", "budgets, kill switches and sessions nearest their caps"),
    "kill": ("tokenfuse.control.killcli", "refuse traffic matching a key/principal/workflow/session/model"),
    "revive": ("tokenfuse.control.killcli", "lift a kill switch"),
    "budget": ("tokenfuse.control.budgetcli", "add, list or remove run-time budgets"),
    "keys": ("tokenfuse.control.keycli", "create, list, revoke or rotate API keys at run time"),
    "reload": ("tokenfuse.gateway.reloadcli", "make a running gateway re-read its config file"),
    "detect": ("tokenfuse.billing.cli", "find runaway inference and caching misses in FOCUS/CUR exports"),
    "reconcile": ("tokenfuse.billing.cli", "compare the bill with the gateway's ledger"),
    "export": ("tokenfuse.billing.cli", "write the ledger as a FOCUS 1.2 dataset"),
    "billing-sample": ("tokenfuse.billing.cli", "generate synthetic billing exports with injected incidents"),
    "lint": ("tokenfuse.lint.cli", "find unbounded LLM calls and agent loops in Python code"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tokenfuse COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `tokenfuse COMMAND --help` for a command's options."]
    return "\n".join(lines)


# What a process killed by SIGPIPE reports (128 + 13), so `set -o pipefail` scripts see the same as with cat.
EXIT_BROKEN_PIPE = 141


def main(argv: list[str] | None = None) -> int:
    """Run a command; a reader that stops early (`tokenfuse status | head`) ends it quietly."""
    try:
        try:
            code = _dispatch(argv)
        finally:
            # Flush here, not at interpreter exit, where a closed pipe can no
            # longer be caught (argparse's --help exits through this too).
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    return code


def _discard_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush
    # cannot print "Exception ignored ... BrokenPipeError".
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (tests capture it)
        pass


def _dispatch(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from tokenfuse import __version__

        print(__version__)
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"tokenfuse: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    # Modules serving several commands take the command name as argv[0].
    shared = sum(1 for m, _ in COMMANDS.values() if m == COMMANDS[name][0]) > 1
    result: int = module.main(args if shared else args[1:])
    return result
