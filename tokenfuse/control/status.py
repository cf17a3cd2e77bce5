"""`tokenfuse status`: budgets, kill switches and the sessions nearest their caps.

The live figures (with reservations in flight) come from a running gateway's
admin API when one answers at the config's server address. Otherwise spend is
rebuilt from the ledger exactly as a starting gateway rebuilds its counters,
so both sources count the same rows; reservations are then zero.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import ssl
import sys
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from tokenfuse.config import Config, ConfigError, KeyConfig, load_config
from tokenfuse.control.admin import PREFIX, to_json
from tokenfuse.control.adminclient import gateway_url
from tokenfuse.control.keys import RuntimeKeyStore
from tokenfuse.control.killcli import first_line, store_name
from tokenfuse.control.killswitch import KillSwitchStore
from tokenfuse.control.runtime import RuntimeBudgetStore
from tokenfuse.ledger.schema import StoreURL, connect, placeholder

GATEWAY_TIMEOUT_S = 2.0
SESSIONS_SHOWN = 10


@dataclasses.dataclass(frozen=True)
class Report:
    source: str  # "gateway" | "ledger"
    note: str
    budgets: list[dict[str, Any]]
    kill_switches: list[dict[str, Any]]
    sessions: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "note": self.note,
            "budgets": self.budgets,
            "kill_switches": self.kill_switches,
            "sessions": self.sessions,
        }


def from_gateway(config: Config, timeout_s: float = GATEWAY_TIMEOUT_S) -> tuple[Report | None, str]:
    """The live report, or None and why not."""
    import httpx

    base = gateway_url(config)
    if not config.server.admin_token:
        return None, "server.admin_token is not set, so a running gateway's live figures cannot be read"
    verify: ssl.SSLContext | bool = True
    if config.server.tls:
        try:
            # Trust exactly the certificate the gateway serves (often self-signed).
            ctx = ssl.create_default_context(cafile=config.server.tls.cert)
            ctx.check_hostname = False
            verify = ctx
        except (OSError, ssl.SSLError) as exc:
            return None, f"cannot load server.tls.cert to check the gateway: {first_line(exc)}"
    try:
        resp = httpx.get(
            f"{base}{PREFIX}/status",
            headers={"authorization": f"Bearer {config.server.admin_token}"},
            timeout=timeout_s,
            verify=verify,
        )
    except httpx.HTTPError as exc:
        return None, f"no gateway answered at {base} ({exc.__class__.__name__})"
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {resp.status_code}"
        return None, f"the gateway at {base} refused the status request: {message}"
    parts = _parts(resp.json())
    # A restarted gateway rebuilds its sessions' spend from the ledger but learns
    # their caps only from their next request: fill the missing caps in here.
    unknown = [s for s in parts["sessions"] if s.get("max_requests") is None and s.get("max_usd") is None]
    if unknown and _ledger_exists(config.store):
        try:
            filled = {str(s["session"]): s for s in _with_caps(config, unknown)}
        except Exception:  # the live figures are still worth showing
            filled = {}
        parts["sessions"] = [filled.get(str(s.get("session")), s) for s in parts["sessions"]]
    return Report("gateway", f"live from the gateway at {base}, including reservations in flight", **parts), ""


def _parts(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {k: list(data.get(k) or []) for k in ("budgets", "kill_switches", "sessions")}


async def _ledger_figures(config: Config, runtime: list[Any]) -> tuple[list[Any], list[dict[str, object]]]:
    from tokenfuse.limits.limiter import Limiter

    config_names = {b.name for b in config.budgets}
    extra = [b for b in runtime if b.name not in config_names]
    # A memory-backed limiter rebuilt from the ledger, the same way a starting
    # gateway rebuilds its counters; it never reserves anything here.
    offline = config.model_copy(update={"counters": "memory", "budgets": [*config.budgets, *extra]})
    limiter = await Limiter.create(offline, rebuild=_ledger_exists(config.store))
    try:
        runtime_names = {b.name for b in extra}
        statuses = [
            dataclasses.replace(s, source="runtime") if s.name in runtime_names else s
            for s in await limiter.snapshot()
        ]
        sessions = await limiter.session_snapshot(limit=1_000_000)
    finally:
        await limiter.close()
    if sessions and _ledger_exists(config.store):
        sessions = await asyncio.to_thread(_with_caps, config, sessions)
    return statuses, sessions[:SESSIONS_SHOWN]


def _with_caps(config: Config, sessions: list[dict[str, object]]) -> list[dict[str, object]]:
    """Fill in each session's caps, which the ledger rebuild cannot know.

    A gateway learns a session's caps from the key and workflow of its
    requests; here they come from the session's latest ledger row.
    """
    names = [str(s["session"]) for s in sessions]
    conn = connect(config.store)
    try:
        p = placeholder(StoreURL.parse(config.store).dialect)
        latest: dict[str, tuple[str | None, str | None]] = {}
        for i in range(0, len(names), 500):
            chunk = names[i : i + 500]
            cur = conn.cursor()
            cur.execute(
                f"SELECT session, key_name, workflow FROM requests WHERE session IN ({', '.join([p] * len(chunk))}) "
                "ORDER BY ts",
                chunk,
            )
            for session, key_name, workflow in cur.fetchall():
                latest[str(session)] = (key_name, workflow)
    finally:
        conn.close()
    keys = {k.name: k for k in _runtime_keys(config.store)}
    keys.update({k.name: k for k in config.keys})  # a config key wins over a run-time key of its name
    out = []
    for s in sessions:
        key_name, workflow = latest.get(str(s["session"]), (None, None))
        caps = config.session_caps(keys.get(key_name or ""), workflow or "default")
        spent = Decimal(str(s.get("spent_usd") or 0))
        requests = int(str(s.get("requests") or 0))
        percent = 0.0
        if caps.max_requests:
            percent = max(percent, requests / caps.max_requests * 100)
        if caps.max_usd:
            percent = max(percent, float(spent / caps.max_usd * 100))
        out.append(
            {
                **s,
                "max_requests": caps.max_requests,
                "max_usd": None if caps.max_usd is None else f"{caps.max_usd:f}",
                "percent": percent,
            }
        )
    out.sort(key=lambda r: (-float(str(r["percent"])), -int(str(r["requests"]))))
    return out


def _runtime_keys(store_url: str) -> list[KeyConfig]:
    store = RuntimeKeyStore(store_url)
    try:
        return [k.key for k in store.list(revoked=True)]
    except Exception:  # an older store without the table: only the config's keys
        return []
    finally:
        store.close()


def _ledger_exists(url: str) -> bool:
    store = StoreURL.parse(url)
    return store.dialect != "sqlite" or store.target == ":memory:" or Path(store.target).exists()


def from_ledger(config: Config, why: str) -> Report:
    if _ledger_exists(config.store):
        kills = KillSwitchStore(config.store)
        budgets = RuntimeBudgetStore(config.store)
        try:
            switches = [s.as_json() for s in kills.list()]
            runtime = budgets.list()
        finally:
            kills.close()
            budgets.close()
    else:
        switches, runtime = [], []
    statuses, sessions = asyncio.run(_ledger_figures(config, runtime))
    note = f"from the ledger in {store_name(config.store)} ({why}); reservations in flight are not included"
    return Report("ledger", note, to_json(statuses), switches, to_json(sessions))


def _pct(value: Any) -> str:
    try:
        return f"{float(value):.1f}%"
    except (TypeError, ValueError):
        return "-"


def _when(text: str | None) -> str:
    if not text:
        return "-"
    return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%MZ")


def _rows(b: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(dimension, limit, spent, reserved) for each limited dimension."""
    out: list[tuple[str, str, str, str]] = []
    if b.get("limit_usd") is not None:
        out.append(("usd", str(b["limit_usd"]), _usd(b.get("spent_usd")), _usd(b.get("reserved_usd"))))
    if b.get("limit_requests") is not None:
        out.append(
            (
                "requests",
                str(b["limit_requests"]),
                str(b.get("spent_requests", 0)),
                str(b.get("reserved_requests", 0)),
            )
        )
    for cls, lim in (b.get("limit_tokens") or {}).items():
        spent = (b.get("spent_tokens") or {}).get(cls, 0)
        reserved = (b.get("reserved_tokens") or {}).get(cls, 0)
        out.append((f"tokens.{cls}", str(lim), str(spent), str(reserved)))
    return out


def _usd(value: Any) -> str:
    try:
        d = Decimal(str(value if value is not None else "0"))
    except InvalidOperation:
        return str(value)
    cents = d.quantize(Decimal("0.0001"))
    return f"{cents:f}"


def render(report: Report) -> str:
    lines = [f"source: {report.source} — {report.note}", ""]
    if report.budgets:
        table: list[tuple[str, ...]] = [
            ("BUDGET", "WINDOW", "LIMIT", "SPENT", "RESERVED", "USED", "RESETS", "FROM")
        ]
        for b in report.budgets:
            first = True
            for dim, limit, spent, reserved in _rows(b):
                table.append(
                    (
                        b["name"] if first else "",
                        b.get("window", "") if first else "",
                        f"{dim} {limit}",
                        spent,
                        reserved,
                        _pct(b.get("percent")) if first else "",
                        _when(b.get("resets_at")) if first else "",
                        b.get("source", "") if first else "",
                    )
                )
                first = False
        lines += _table(table)
    else:
        lines.append("no budgets (add some under `budgets:` in the config or with `tokenfuse budget add`)")
    lines += ["", "kill switches:"]
    if report.kill_switches:
        for s in report.kill_switches:
            target = "all traffic" if s["scope"] == "all" else f"{s['scope']}={s['value']}"
            lines.append(f"  {target}" + (f"  reason: {s['reason']}" if s.get("reason") else ""))
    else:
        lines.append("  none")
    lines += ["", "sessions nearest their caps:"]
    if report.sessions:
        table = [("SESSION", "REQUESTS", "USD", "USED", "EXPIRES")]
        for s in report.sessions:
            reqs = (
                f"{s.get('requests', 0)}/{s['max_requests']}"
                if s.get("max_requests")
                else str(s.get("requests", 0))
            )
            usd = _usd(s.get("spent_usd")) + (f"/{s['max_usd']}" if s.get("max_usd") else "")
            table.append(
                (str(s.get("session")), reqs, usd, _pct(s.get("percent")), _when(s.get("expires_at")))
            )
        lines += ["  " + line for line in _table(table)]
    else:
        lines.append("  none active")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tokenfuse status", description="Budgets, kill switches and the sessions nearest their caps."
    )
    p.add_argument("--config", required=True, help="path to tokenfuse.yaml")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument(
        "--ledger", action="store_true", help="skip the running gateway and compute from the ledger"
    )
    args = p.parse_args(argv)
    try:
        config = load_config(args.config, secrets=False)
    except ConfigError as exc:
        print(f"tokenfuse status: {exc}", file=sys.stderr)
        return 2
    try:
        report, why = (None, "--ledger given") if args.ledger else from_gateway(config)
        if report is None:
            report = from_ledger(config, why)
    except Exception as exc:
        print(
            f"tokenfuse status: cannot read the store {store_name(config.store)}: {first_line(exc)}",
            file=sys.stderr,
        )
        return 1
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(render(report))
    return 0
