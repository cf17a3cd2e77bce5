"""The admin HTTP API: status, kill switches, run-time budgets and keys, and config reload.

A raw ASGI app; the gateway routes every path under ``/_tokenfuse/admin`` to
it. Every call needs ``Authorization: Bearer <server.admin_token>``; with no
token configured the API is off (403) rather than open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from pydantic import ValidationError

from tokenfuse.asgi import Receive, Scope, Send
from tokenfuse.config import BudgetConfig, KeyConfig
from tokenfuse.control.keys import SPEC_FIELDS, KeyStoreError, RuntimeKeyStore, validate_new_key
from tokenfuse.control.killswitch import KillSwitchStore, normalise
from tokenfuse.control.runtime import ControlWatcher, RuntimeBudgetStore

log = logging.getLogger("tokenfuse.admin")

PREFIX = "/_tokenfuse/admin"
_KEY = re.compile(r"[a-z_][a-z0-9_]*")
MAX_BODY = 1024 * 1024
# How long a kill or revive waits for the store before it is applied here only:
# an operator stopping a runaway must get an answer even from a hung store.
STORE_WRITE_TIMEOUT_S = 5.0
NOT_PERSISTED = (
    "applied on this gateway; not yet persisted: {error}; other replicas will apply it when the store is "
    "reachable (this gateway persists it then; a restart before that loses it)"
)


class LimiterView(Protocol):
    async def snapshot(self, now: float | None = None) -> list[Any]: ...
    async def session_snapshot(self, limit: int = 10) -> list[dict[str, Any]]: ...


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def to_json(value: Any) -> Any:
    """Dataclasses, Decimals (as strings, never floats) and datetimes to JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def validation_message(exc: ValidationError) -> str:
    parts: list[str] = []
    errors = exc.errors()
    # A rolling window with a bad duration explains itself; skip the generic hint.
    specific_window = any(e["loc"][:1] == ("window",) and len(e["loc"]) > 2 for e in errors)
    for err in errors[:5]:
        if err["loc"][:1] == ("window",) and len(err["loc"]) <= 2:
            if specific_window:
                continue
            # One message for the whole union, not one per branch.
            hint = "window: use minute, hour, day, week, month, total or rolling:DURATION (e.g. rolling:1h)"
            if hint not in parts:
                parts.append(hint)
            continue
        # Drop union-branch tags pydantic puts in the path; keep the user's keys.
        where = ".".join(str(p) for p in err["loc"] if isinstance(p, int) or _KEY.fullmatch(str(p)))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field is missing"
        parts.append(f"{where or '(body)'}: {msg}")
    return "; ".join(parts)


class AdminApp:
    def __init__(
        self,
        token: str | None,
        kills_store: KillSwitchStore,
        watcher: ControlWatcher | None,
        limiter: LimiterView | None,
        runtime_store: RuntimeBudgetStore,
    ) -> None:
        self._token = token.encode() if token else None
        self.kills_store = kills_store
        self.watcher = watcher
        self.limiter = limiter
        self.runtime_store = runtime_store
        # Latest live-guard findings (tokenfuse.guards.Guards.recent), set by the gateway.
        self.guard_findings: Callable[[], list[dict[str, Any]]] | None = None
        # Set by the gateway: run-time keys, the names of the config's keys, and reload.
        self.key_store: RuntimeKeyStore | None = None
        self.config_key_names: Callable[[], set[str]] | None = None
        self.reload: Callable[[], Awaitable[Any]] | None = None

    async def close(self) -> None:
        await asyncio.to_thread(self.kills_store.close)
        await asyncio.to_thread(self.runtime_store.close)
        if self.key_store is not None:
            await asyncio.to_thread(self.key_store.close)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        try:
            self._authorise(scope)
            status, body = await self._route(scope, receive)
            await _respond(send, status, body)
        except HTTPError as exc:
            await _respond(send, exc.status, {"error": {"message": exc.message}}, exc.headers)
        except Exception:
            log.exception("admin API error on %s %s", scope.get("method"), scope.get("path"))
            await _respond(send, 500, {"error": {"message": "internal error; see the gateway log"}})

    def _authorise(self, scope: Scope) -> None:
        if self._token is None:
            raise HTTPError(
                403, "the admin API is disabled: set server.admin_token in the config and restart"
            )
        supplied = b""
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                scheme, _, credential = bytes(value).partition(b" ")
                if scheme.lower() == b"bearer":
                    supplied = credential.strip()
        if not hmac.compare_digest(supplied, self._token):
            raise HTTPError(
                401,
                "missing or wrong admin token; send Authorization: Bearer <server.admin_token>",
                [(b"www-authenticate", b'Bearer realm="tokenfuse-admin"')],
            )

    async def _route(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        path: str = scope["path"]
        if path.startswith(PREFIX):
            path = path[len(PREFIX) :]
        path = path.rstrip("/") or "/"
        method: str = scope["method"]
        if path == "/status" and method == "GET":
            return 200, await self.status()
        if path == "/kills":
            if method == "GET":
                return 200, await self._list_kills()
            if method == "POST":
                return await self._kill(await _json_body(receive))
            if method == "DELETE":
                return await self._revive(await _json_body(receive))
            raise _method_not_allowed("GET, POST, DELETE")
        if path == "/kills/revive":
            if method == "POST":
                return await self._revive(await _json_body(receive))
            raise _method_not_allowed("POST")
        if path == "/budgets":
            if method == "GET":
                budgets = await asyncio.to_thread(self.runtime_store.list)
                return 200, {"budgets": [b.model_dump(mode="json") for b in budgets]}
            if method == "POST":
                return await self._add_budget(await _json_body(receive))
            raise _method_not_allowed("GET, POST")
        if path.startswith("/budgets/"):
            if method == "DELETE":
                return await self._remove_budget(path[len("/budgets/") :])
            raise _method_not_allowed("DELETE")
        if path == "/reload":
            if method == "POST":
                return await self._reload()
            raise _method_not_allowed("POST")
        if path == "/keys":
            if method == "GET":
                return 200, {"keys": [k.as_json() for k in await asyncio.to_thread(self._keys().list)]}
            if method == "POST":
                return await self._create_key(await _json_body(receive))
            raise _method_not_allowed("GET, POST")
        if path.startswith("/keys/"):
            from urllib.parse import unquote

            name, _, action = unquote(path[len("/keys/") :]).partition("/")
            if method == "DELETE" and not action:
                return await self._revoke_key(name)
            if method == "POST" and action in ("revoke", "rotate"):
                return await (self._revoke_key(name) if action == "revoke" else self._rotate_key(name))
            raise _method_not_allowed("DELETE, or POST .../revoke or .../rotate")
        raise HTTPError(404, f"no admin endpoint {method} {PREFIX}{path}; see docs/operations.md")

    async def status(self) -> dict[str, Any]:
        budgets: list[Any] = []
        sessions: list[dict[str, Any]] = []
        if self.limiter is not None:
            try:
                budgets = await self.limiter.snapshot()
                sessions = await self.limiter.session_snapshot()
            except Exception as exc:
                # The counter store (Redis) is down: say so rather than show zeros.
                raise HTTPError(503, f"budget counters are unavailable: {exc}") from None
        kills = await self._list_kills()
        return {
            "budgets": to_json(budgets),
            **kills,
            "sessions": to_json(sessions),
            "guards": self.guard_findings() if self.guard_findings is not None else [],
        }

    async def _refresh(self) -> None:
        # The store write is what counts; other replicas poll. Refreshing here
        # makes this replica exact for the very next request.
        if self.watcher is not None:
            try:
                await self.watcher.refresh_now()
            except Exception as exc:
                # The write landed; the regular poll applies it once the store reads again.
                log.warning("applied to the store but not yet to this replica: %s", exc)

    async def _list_kills(self) -> dict[str, Any]:
        pending = self.watcher.pending() if self.watcher is not None else []
        not_persisted = [
            {"scope": c.scope, "value": c.value, "action": "kill" if c.switch else "revive", "error": c.error}
            for c in pending
        ]
        try:
            switches = await asyncio.wait_for(asyncio.to_thread(self.kills_store.list), STORE_WRITE_TIMEOUT_S)
        except Exception as exc:
            if self.watcher is None:
                raise HTTPError(
                    503, f"the store is unreachable ({_first_line(exc)}); try again when it is"
                ) from None
            # What this replica enforces is still worth showing during an outage.
            return {
                "kill_switches": [s.as_json() for s in self.watcher.kills.active()],
                "not_persisted": not_persisted,
                "store_error": f"the store is unreachable ({_first_line(exc)}); showing what this gateway applies",
            }
        if pending:
            # Overlay what this replica applies but the store has not taken yet.
            merged = {(s.scope, s.value): s for s in switches}
            for c in pending:
                if c.switch is None:
                    merged.pop((c.scope, c.value), None)
                else:
                    merged[(c.scope, c.value)] = c.switch
            switches = list(merged.values())
        return {"kill_switches": [s.as_json() for s in switches], "not_persisted": not_persisted}

    async def _kill(self, body: dict[str, Any]) -> tuple[int, Any]:
        scope, value = _scope_value(body)
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise HTTPError(400, "reason must be a string")
        try:
            switch = await asyncio.wait_for(
                asyncio.to_thread(self.kills_store.set, scope, value, reason), STORE_WRITE_TIMEOUT_S
            )
        except Exception as exc:
            error = _store_error(exc)
            if self.watcher is None:
                raise HTTPError(
                    503, f"the kill switch was not set: {error}; fix the store or use a running gateway"
                ) from None
            switch = self.watcher.hold(scope, value, reason, error)
            message = NOT_PERSISTED.format(error=error)
            return 202, {"kill_switch": switch.as_json(), "persisted": False, "message": message}
        await self._refresh()
        log.warning("kill switch set through the admin API: %s", switch.describe())
        poll = f"{self.watcher.poll_s * 1000:g} ms" if self.watcher is not None else "one kill_poll_ms"
        return 201, {
            "kill_switch": switch.as_json(),
            "persisted": True,
            "message": f"applied on this gateway and persisted; other replicas apply it within {poll}",
        }

    async def _revive(self, body: dict[str, Any]) -> tuple[int, Any]:
        scope, value = _scope_value(body)
        try:
            removed = await asyncio.wait_for(
                asyncio.to_thread(self.kills_store.clear, scope, value), STORE_WRITE_TIMEOUT_S
            )
        except Exception as exc:
            error = _store_error(exc)
            if self.watcher is None or not self.watcher.hold_revive(scope, value, error):
                raise HTTPError(
                    503,
                    f"the kill switch for {scope}={value} was not lifted: {error}; "
                    "this gateway does not apply it either, so there is nothing to lift here",
                ) from None
            message = NOT_PERSISTED.format(error=error)
            return 202, {"revived": {"scope": scope, "value": value}, "persisted": False, "message": message}
        await self._refresh()
        if not removed:
            raise HTTPError(404, f"no kill switch for {scope}={value}; GET {PREFIX}/kills lists them")
        log.warning("kill switch lifted through the admin API: %s=%s", scope, value)
        return 200, {"revived": {"scope": scope, "value": value}, "persisted": True}

    async def _add_budget(self, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            budget = BudgetConfig.model_validate(body)
        except ValidationError as exc:
            raise HTTPError(400, f"invalid budget: {validation_message(exc)}") from None
        if self.limiter is not None:
            for status in await self.limiter.snapshot():
                if (
                    getattr(status, "name", None) == budget.name
                    and getattr(status, "source", None) == "config"
                ):
                    raise HTTPError(
                        409,
                        f"budget {budget.name!r} is defined in the config file; pick another name or edit the file",
                    )
        created = await asyncio.to_thread(self.runtime_store.put, budget)
        await self._refresh()
        return (201 if created else 200), {"budget": budget.model_dump(mode="json"), "created": created}

    async def _remove_budget(self, name: str) -> tuple[int, Any]:
        from urllib.parse import unquote

        name = unquote(name)
        removed = await asyncio.to_thread(self.runtime_store.remove, name)
        if not removed:
            raise HTTPError(
                404, f"no run-time budget named {name!r}; budgets from the config file are edited there"
            )
        await self._refresh()
        return 200, {"removed": name}


    async def _reload(self) -> tuple[int, Any]:
        if self.reload is None:
            raise HTTPError(501, "this gateway cannot reload its config")
        result = await self.reload()
        if not result.ok:
            # 422: the file was read and refused; the old config keeps running.
            return 422, {**result.as_json(), "error": {"message": result.message}}
        return 200, result.as_json()

    def _keys(self) -> RuntimeKeyStore:
        if self.key_store is None:
            raise HTTPError(501, "this gateway has no run-time key store")
        return self.key_store

    async def _create_key(self, body: dict[str, Any]) -> tuple[int, Any]:
        store = self._keys()
        unknown = sorted(set(body) - {"name", *SPEC_FIELDS})
        if unknown:
            raise HTTPError(400, f"invalid key: unknown field(s) {', '.join(unknown)}; secrets are generated, not sent")
        try:
            # A placeholder digest: the secret is generated by the store and never sent in.
            key = KeyConfig.model_validate({**body, "key_sha256": "0" * 64})
        except ValidationError as exc:
            raise HTTPError(400, f"invalid key: {validation_message(exc)}") from None
        try:
            validate_new_key(key, self.config_key_names() if self.config_key_names else set())
            secret = await asyncio.to_thread(store.create, key)
        except KeyStoreError as exc:
            raise HTTPError(409, str(exc)) from None
        await self._refresh()
        log.warning("run-time key %r created through the admin API (principal %s)", key.name, key.principal)
        stored = [k for k in await asyncio.to_thread(store.list) if k.key.name == key.name]
        return 201, {
            "key": stored[0].as_json() if stored else {"name": key.name},
            "secret": secret,
            "message": "shown once: store it now; the gateway keeps only its SHA-256",
        }

    async def _revoke_key(self, name: str) -> tuple[int, Any]:
        if not await asyncio.to_thread(self._keys().revoke, name):
            raise HTTPError(404, f"no active run-time key named {name!r}; GET {PREFIX}/keys lists them")
        await self._refresh()
        log.warning("run-time key %r revoked through the admin API", name)
        return 200, {"revoked": name}

    async def _rotate_key(self, name: str) -> tuple[int, Any]:
        try:
            secret = await asyncio.to_thread(self._keys().rotate, name)
        except KeyStoreError as exc:
            raise HTTPError(404, str(exc)) from None
        await self._refresh()
        log.warning("run-time key %r rotated through the admin API", name)
        return 200, {"rotated": name, "secret": secret, "message": "shown once; the old secret no longer works"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _store_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"the store did not answer within {STORE_WRITE_TIMEOUT_S:g} s"
    return f"the store is unreachable ({type(exc).__name__}: {_first_line(exc)})"


def _scope_value(body: dict[str, Any]) -> tuple[str, str]:
    scope = body.get("scope")
    value = body.get("value")
    if not isinstance(scope, str):
        raise HTTPError(400, 'scope is required, e.g. {"scope": "workflow", "value": "droid"}')
    if value is not None and not isinstance(value, str):
        raise HTTPError(400, "value must be a string")
    try:
        return normalise(scope, value)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from None


def _method_not_allowed(allowed: str) -> HTTPError:
    return HTTPError(405, f"method not allowed; use {allowed}", [(b"allow", allowed.encode())])


async def _json_body(receive: Receive) -> dict[str, Any]:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise HTTPError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise HTTPError(413, "request body too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    try:
        data = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise HTTPError(400, "the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise HTTPError(400, "the body must be a JSON object")
    return data


async def _respond(
    send: Send, status: int, body: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body, separators=(",", ":")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
