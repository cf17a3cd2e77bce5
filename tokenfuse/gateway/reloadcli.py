"""`tokenfuse reload`: ask a running gateway to re-read its config file.

The same as ``kill -HUP <pid>``, but with an answer: the exit status is 0 only
when the gateway took the new config, and 1 with the reason when it kept the
old one (invalid file) or could not be asked.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

from tokenfuse.config import ConfigError, load_config
from tokenfuse.limits.killcli import gateway_url

ADMIN_RELOAD = "/_tokenfuse/admin/reload"
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


def _call(url: str, token: str) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        url + ADMIN_RELOAD, data=b"{}", method="POST",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    context = ssl.create_default_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S, context=context) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"{}")
        except ValueError:
            payload = {}
        return exc.code, payload if isinstance(payload, dict) else {}


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
        status, payload = _call(url, token)
    except (OSError, ValueError) as exc:
        print(f"tokenfuse reload: no gateway answered at {url} ({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return 1
    message = str(payload.get("message") or payload.get("error", {}).get("message") or "")
    if status != 200:
        print(f"tokenfuse reload: not reloaded (HTTP {status}): {message}", file=sys.stderr)
        return 1
    print(f"reloaded {message}")
    return 0
