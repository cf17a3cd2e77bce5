"""The CLI's way to a running gateway's admin API: its address and one call.

`kill`, `revive`, `reload` and `status` all reach the gateway the same way;
this is that way, so a TLS or addressing fix lands once.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from tokenfuse.config import Config

PREFIX = "/_tokenfuse/admin"


def gateway_url(config: Config, explicit: str | None = None) -> str:
    """The gateway's base URL: `explicit` if given, else the config's server address."""
    if explicit:
        return explicit.rstrip("/")
    host = config.server.host
    # A wildcard bind address is reachable on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "https" if config.server.tls is not None else "http"
    return f"{scheme}://{host}:{config.server.port}"


def admin_call(
    url: str, token: str, path: str, method: str = "GET", body: dict[str, Any] | None = None,
    timeout_s: float = 10.0,
) -> tuple[int, dict[str, Any]]:
    """(status, JSON object) of one admin request; an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url + PREFIX + path, data=data, method=method,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    context = ssl.create_default_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(req, timeout=timeout_s, context=context) as resp:
            payload = json.loads(resp.read() or b"{}")
            return resp.status, payload if isinstance(payload, dict) else {}
    except urllib.error.HTTPError as exc:
        try:
            payload = json.loads(exc.read() or b"{}")
        except ValueError:
            payload = {}
        return exc.code, payload if isinstance(payload, dict) else {}
