"""`tokenfuse reload`: ask a running gateway to re-read its config file.

The same as ``kill -HUP <pid>``, but with an answer: the exit status is 0 only
when the gateway took the new config, and 1 with the reason when it kept the
old one (invalid file) or could not be asked.
"""

from __future__ import annotations

import argparse
import sys

from tokenfuse.config import ConfigError, load_config
from tokenfuse.control.adminclient import admin_call, gateway_url

TIMEOUT_S = 30.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tokenfuse reload",
        description="Make a running gateway re-read its config file (keys, upstreams, budgets, prices, guards, "
        "defaults) without a restart. In-flight requests finish on the old config; an invalid file changes "
        "nothing. Exit 0 when reloaded, 1 when not.",
    )
    p.add_argument("--config", required=True, help="the gateway's config (for its address and server.admin_token)")
    p.add_argument("--gateway", metavar="URL", help="the gateway to ask (default: the config's server address)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        # Read here too: most mistakes are reported at once, all of them, before a gateway is asked.
        # Secrets may be set only in the gateway's environment, so the gateway checks the keys.
        config = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse reload: not reloaded, the gateway keeps its running config:\n{exc}", file=sys.stderr)
        return 1
    token = config.server.admin_token
    if not token:
        print(
            "tokenfuse reload: server.admin_token is not set, so the admin API is off; set it and restart once, "
            "or send the gateway SIGHUP (kill -HUP <pid>)",
            file=sys.stderr,
        )
        return 1
    url = gateway_url(config, args.gateway)
    try:
        status, payload = admin_call(url, token, "/reload", "POST", {}, TIMEOUT_S)
    except (OSError, ValueError) as exc:
        print(f"tokenfuse reload: no gateway answered at {url} ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return 1
    message = str(payload.get("message") or payload.get("error", {}).get("message") or "")
    if status != 200:
        print(f"tokenfuse reload: not reloaded (HTTP {status}): {message}", file=sys.stderr)
        return 1
    print(f"reloaded {message}")
    return 0
