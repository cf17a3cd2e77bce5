"""The gateway's ASGI application: authenticate, bound, reserve, forward, meter, settle, record.

Protocol knowledge lives in :mod:`tokenfuse.protocols`, limits in
:mod:`tokenfuse.limits`, the ledger in :mod:`tokenfuse.ledger`; this module only
moves bytes between them in the right order. Every outcome, including refusals
and errors, ends in exactly one ledger row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import time
from decimal import Decimal
from types import ModuleType
from typing import Any

from tokenfuse.aio import spawn
from tokenfuse.asgi import Receive, Scope, Send
from tokenfuse.caching.verify import AutoCache, cache_saved_usd
from tokenfuse.config import Config, KeyConfig
from tokenfuse.control.keys import RuntimeKeys, RuntimeKeyStore
from tokenfuse.gateway import gctune, routes
from tokenfuse.gateway.headers import forwardable
from tokenfuse.gateway.httpclient import ConnectError, ConnectionBroken, HTTPClient, Response
from tokenfuse.gateway.identity import AuthError, Identity, KeyRing
from tokenfuse.gateway.reload import REQUEST_RUNTIME, Reloader, ReloadResult, Runtime, build_runtime
from tokenfuse.gateway.summary import config_warnings, summary_lines
from tokenfuse.gateway.upstream import (
    DROP_RESPONSE_HEADERS,
    NoUpstream,
    Router,
    Upstream,
    bedrock_path,
)
from tokenfuse.guards import Guards
from tokenfuse.ledger.journal import AdmissionJournal, incomplete_row
from tokenfuse.ledger.record import LedgerRow, format_cost
from tokenfuse.ledger.writer import LedgerWriter
from tokenfuse.limits.bounds import Bound
from tokenfuse.limits.context import RequestContext
from tokenfuse.limits.fit import plan as plan_bound
from tokenfuse.limits.limiter import Admission, Limiter
from tokenfuse.ops.app import MODEL_PREFIX, OPS_PATHS, OpsApp
from tokenfuse.pricing import MAX_MODEL_NAME, Price, PriceBook
from tokenfuse.protocols import anthropic as p_anthropic
from tokenfuse.protocols import bedrock as p_bedrock
from tokenfuse.protocols import openai as p_openai
from tokenfuse.protocols.base import ProtocolError, RequestInfo
from tokenfuse.protocols.errors import refusal
from tokenfuse.routing import HEADER as _ROUTED
from tokenfuse.routing import BudgetLevels, Routed
from tokenfuse.usage import Usage

log = logging.getLogger("tokenfuse.gateway")

PROTOCOLS: dict[str, ModuleType] = {"openai": p_openai, "anthropic": p_anthropic, "bedrock": p_bedrock}
ADMIN_PREFIX = "/_tokenfuse/admin"
ZERO_COST_ROUTES = frozenset({"count_tokens"})
_ZERO = Decimal(0)
MAX_SESSION_ID = 128
_UNPRICED = Price("(unpriced)", _ZERO, _ZERO, None, None, None)
ROUTED_HEADER = _ROUTED.encode()


class _Refused(Exception):
    """Answer now in the caller's protocol, record the row, never forward."""

    def __init__(self, kind: str, message: str, outcome: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.outcome, self.reason = kind, message, outcome, reason or message


class _Request:
    """Everything known about one request, filled in as it goes; becomes its ledger row."""

    __slots__ = (
        "admission", "body", "bound", "cost", "ctx", "forward_headers", "headers", "id", "ident", "info", "key",
        "outcome", "price", "protocol", "raw_path", "reason", "route", "routed", "session", "started", "status",
        "upstream", "upstream_ms", "usage",
    )

    def __init__(self, request_id: str, raw_path: str, headers: dict[str, str]) -> None:
        self.id = request_id
        self.raw_path = raw_path
        self.headers = headers
        self.started = time.perf_counter()
        self.protocol = "openai"
        self.route: routes.Route | None = None
        self.key: KeyConfig | None = None
        self.session: str | None = None  # set once the caller is authenticated
        self.info: RequestInfo | None = None
        self.body = b""
        self.price: Price | None = None
        self.ctx: RequestContext | None = None
        self.admission: Admission | None = None
        self.bound: Bound | None = None
        self.forward_headers: dict[str, str] = {}
        self.ident: Identity | None = None
        self.upstream: Upstream | None = None
        self.upstream_ms = 0.0
        self.usage = Usage()
        self.cost = _ZERO
        self.status = 0
        self.outcome = "ok"
        self.reason: str | None = None
        self.routed: Routed | None = None  # a routing rule serves it as another model (tokenfuse/routing.py)


class Gateway:
    def __init__(self, config: Config, *, prices: PriceBook | None = None) -> None:
        # What requests read from the config, swapped whole by a reload (tokenfuse/gateway/reload.py).
        self.runtime_keys = RuntimeKeys()
        self.runtime: Runtime = build_runtime(config, self.runtime_keys, prices=prices)
        self.reloader = Reloader(self, self._build_guards)
        self._guard_sink: Any = None
        # Automatic prompt caching and its verification, shared with the cache doctor guard (docs/caching.md).
        self.caching = AutoCache(config.caching, min_requests=config.guards.cache_doctor.min_requests)
        # Admitted requests are journaled before they are forwarded, so a SIGKILL cannot
        # make the ledger (and counters rebuilt from it) forget them; docs/ledger.md.
        self.journal = AdmissionJournal.for_store(config.store, config.ledger.journal_dir)
        self.ledger = LedgerWriter(
            config.store, batch_interval_ms=config.ledger.batch_interval_ms, batch_size=config.ledger.batch_size,
            journal=self.journal,
        )
        self.limiter: Limiter | None = None
        self.kills: Any = None
        self.watcher: Any = None
        self.alerts: Any = None
        self.admin: Any = None
        self.http: HTTPClient | None = None
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        # Requests between arrival and their ledger row (which is written after the
        # response is sent): lets tests and shutdown know when the ledger has caught up.
        self.active = 0
        self._max_body = config.server.max_body_bytes
        # Probes, /metrics and /v1/models: never metered (tokenfuse/ops/app.py).
        self.ops = OpsApp(self)
        self._observe = self.ops.metrics.observe
        # Budget levels for routing rules, from settles: no counter round trip per request.
        self.levels = BudgetLevels()

    # A request reads one Runtime from start to end (set in _handle): a reload
    # mid-request does not change the config it is served under.
    @property
    def _rt(self) -> Runtime:
        return REQUEST_RUNTIME.get() or self.runtime

    @property
    def config(self) -> Config:
        return self._rt.config

    @property
    def keys(self) -> KeyRing:
        return self._rt.keys

    @property
    def router(self) -> Router:
        return self._rt.router

    @property
    def prices(self) -> PriceBook:
        return self._rt.prices

    @property
    def guards(self) -> Guards | None:
        return self._rt.guards

    def _build_guards(self, config: Config) -> Guards | None:
        guards = Guards(config.guards, self._guard_sink, caching=self.caching)
        return guards if guards.enabled else None

    async def reload(self, path: str | None = None) -> ReloadResult:
        """Re-read the config file and swap it in; on any error keep the running one (SIGHUP, admin API)."""
        result = await self.reloader.reload(path)
        if result.ok:
            gctune.after_reload()
        return result

    # -- lifecycle -----------------------------------------------------------------

    async def startup(self) -> None:
        from tokenfuse.control.admin import AdminApp
        from tokenfuse.control.killswitch import KillSwitches, KillSwitchStore
        from tokenfuse.control.runtime import ControlWatcher, RuntimeBudgetStore
        from tokenfuse.limits.alerts import AlertManager

        self.ledger.start()
        redis_url = self.config.counters if self.config.counters != "memory" else None
        self.alerts = AlertManager(self.config.alerts, self.config.store, redis_url)
        alerts, levels = self.alerts, self.levels

        def settled(statuses: list[Any]) -> None:
            levels.observe(statuses)
            alerts.observe(statuses)

        self.limiter = await Limiter.create(self.config, on_settle=settled)
        levels.source = self.limiter.snapshot
        if self._rt.routing is not None and self._rt.routing.budgets:
            await levels.refresh()
        self.kills = KillSwitches()
        self.watcher = ControlWatcher(
            self.config.store, self.kills, self.limiter, self.config.kill_poll_ms, keys=self.runtime_keys
        )
        await self.watcher.start()
        await self.alerts.start()
        alerts = self.alerts
        self._guard_sink = lambda f: alerts.notify(
            f"guard:{f.guard}:{f.subject}", f.guard, f.payload(time.time()), event="guard_finding"
        )
        self.runtime = dataclasses.replace(self.runtime, guards=self._build_guards(self.config))
        self.admin = AdminApp(
            self.config.server.admin_token,
            KillSwitchStore(self.config.store),
            self.watcher,
            self.limiter,
            RuntimeBudgetStore(self.config.store),
        )
        if self.guards is not None:
            self.admin.guard_findings = self.guards.recent
        # Run-time keys and reload through the admin API (tokenfuse/control/admin.py).
        self.admin.key_store = RuntimeKeyStore(self.config.store)
        self.admin.config_key_names = lambda: {k.name for k in self.config.keys}
        self.admin.reload = self.reload
        log.info("%s", "; ".join(summary_lines(self.config, len(self.runtime_keys))))
        for warning in config_warnings(self.config):
            log.warning("%s", warning)
        # Sends no headers of its own (but Host, Content-Length) and keeps no cookies: one
        # client serves every caller (tokenfuse/gateway/httpclient.py).
        self.http = HTTPClient(
            connect_timeout=self.config.server.connect_timeout_s, read_timeout=self.config.server.upstream_timeout_s
        )

    async def shutdown(self) -> None:
        for closer in (
            self.watcher.stop() if self.watcher else None,
            self.alerts.stop() if self.alerts else None,
            self.http.close() if self.http else None,
            self.limiter.close() if self.limiter else None,
            self.admin.close() if self.admin else None,
        ):
            if closer is not None:
                try:
                    await closer
                except Exception:  # shutdown must reach the ledger flush below
                    log.exception("error during shutdown")
        # Blocking, on purpose: SIGTERM must not lose a row.
        await asyncio.to_thread(self.ledger.close)

    # -- ASGI ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            raw_path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
            if raw_path in OPS_PATHS or raw_path.startswith(MODEL_PREFIX):
                await self.ops(scope, receive, send)
                return
            if raw_path.startswith(ADMIN_PREFIX):
                await self.admin(scope, receive, send)
                return
            await self._handle(scope, receive, send, raw_path)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("tokenfuse failed to start: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the request pipeline ------------------------------------------------------

    async def _handle(self, scope: Scope, receive: Receive, send: Send, raw_path: str) -> None:
        # ASGI servers deliver header names lower-cased already.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        req = _Request(f"tf-{self._id_prefix}-{next(self._ids)}", raw_path, headers)
        REQUEST_RUNTIME.set(self.runtime)  # this task's own context: the request's config to its end
        self.active += 1
        try:
            await self._pipeline(req, scope, receive, send)
        except _Refused as r:
            req.outcome = r.outcome
            req.reason = r.reason if req.reason is None else f"{r.reason}; {req.reason}"
            status, hdrs, body = refusal(
                req.protocol, r.kind, r.message,
                openai_status=self.config.server.openai_refusal_status, user_agent=req.headers.get("user-agent"),
            )
            req.status = status
            if req.outcome == "upstream_error":
                log.warning("upstream failure on %s %s: %s", req.id, req.key.name if req.key else "-", req.reason)
            elif req.outcome not in ("not_found", "bad_request", "unauthorized"):
                log.info("refused %s %s: %s", req.id, req.key.name if req.key else "-", r.reason)
            await self._send_whole(send, req, status, hdrs, body)
            if req.admission is not None and self.limiter is not None:
                await self.limiter.release(req.admission)
            if req.ident is not None and req.cost == _ZERO:
                # Nothing was billed: the SDK's retry, signed in the same second,
                # must not be taken for a replay.
                self.keys.forget(req.ident)
        except _StreamAborted:
            # Returning with the response unfinished makes the server drop the
            # connection, which is how a client learns the stream is incomplete.
            log.warning("upstream stream broke on %s: %s", req.id, req.reason)
        except Exception as exc:  # whatever happens, answer in protocol and keep serving
            await self._internal_error(send, req, exc)
        except asyncio.CancelledError:
            # The server's shutdown deadline passed with this request still running.
            # Returning (not re-raising) keeps a traceback out of the log; the row says what happened.
            await self._cancelled(req)
        finally:
            if self.guards is not None and req.outcome == "ok" and req.ctx is not None and req.info is not None:
                self.guards.observe(req.ctx, req.info, req.body, req.usage, req.cost, req.price)
            try:
                self._record(req)
            finally:
                self.active -= 1

    async def _alert_refusal(self, budget: str, needed: Decimal) -> None:
        """The first refusal of a budget in its window alerts (once; refusal_seen does no I/O)."""
        if self.alerts is None or self.limiter is None or self.alerts.refusal_seen(budget, needed):
            return
        try:
            status = next((s for s in await self.limiter.snapshot() if s.name == budget), None)
        except Exception:  # counters down: skip the alert, never the refusal
            status = None
        if status is not None:
            self.alerts.refused(status, needed)

    async def _cancelled(self, req: _Request) -> None:
        req.outcome = "incomplete"
        if req.admission is not None and self.limiter is not None:
            if req.upstream is not None:
                await self._charge_bound(req, "gateway shut down before the request finished; charged at the bound")
            else:
                await self.limiter.release(req.admission)
                req.reason = "gateway shut down before the request was sent"
        elif req.upstream is not None:
            req.reason = "gateway shut down before the request finished"
        else:
            req.outcome, req.reason = "client_abort", "gateway shut down before the request was sent"

    async def _internal_error(self, send: Send, req: _Request, exc: Exception) -> None:
        """A bug or an unforeseen input: one log line, an in-protocol 500, never a served row."""
        log.error("internal error on %s: %s: %.200s", req.id, type(exc).__name__, exc)
        log.debug("internal error on %s", req.id, exc_info=exc)
        if req.admission is not None and self.limiter is not None:
            # Forwarded or not, the bound is the most the provider can bill for it.
            if req.upstream is not None and req.bound is not None:
                await self._charge_bound(req, "internal error after forwarding; charged at the bound")
            else:
                await self.limiter.release(req.admission)
        req.outcome = "error"
        req.reason = f"internal error ({type(exc).__name__})"
        if req.status == 0:  # nothing sent yet
            status, hdrs, body = refusal(
                req.protocol, "internal", f"tokenfuse could not handle this request (request id {req.id}); "
                "the operator can find it in the gateway log"
            )
            req.status = status
            try:
                await self._send_whole(send, req, status, hdrs, body)
            except Exception:  # the response had already started; the server closes it
                pass

    async def _pipeline(self, req: _Request, scope: Scope, receive: Receive, send: Send) -> None:
        route = routes.match(req.raw_path)
        if route is None or scope["method"] != "POST":
            req.protocol = routes.guess_protocol(req.raw_path, req.headers)
            what = "no such route" if route is None else f"{scope['method']} is not allowed here; use POST"
            raise _Refused("not_found", f"{what}: {scope['method']} {scope['path']}. tokenfuse serves only metered "
                           "routes (see docs/gateway.md)", "not_found")
        req.route = route
        req.protocol = route.protocol
        ctype = req.headers.get("content-type")
        if ctype is not None and "json" not in ctype:
            raise _Refused(
                "bad_request", f"content-type {ctype!r} is not JSON; send the body as application/json", "bad_request"
            )
        body = await self._read_body(receive, req)
        req.body = body
        try:
            ident = self.keys.identify(
                req.headers, "POST", lambda: self._public_url(scope, req.raw_path, req.headers), body
            )
        except AuthError as exc:
            raise _Refused("unauthorized", exc.message, "unauthorized") from None
        req.ident, req.key = ident, ident.key
        # A SigV4 caller's session header counts only if the signature covers it.
        session = ident.session(req.headers)
        req.session = self._scoped_session(req.key, session) if session is not None else None
        proto = PROTOCOLS[route.protocol]
        try:
            info: RequestInfo = proto.parse_request(route.route, body, route.model_from_path)
        except ProtocolError as exc:
            kind = {404: "not_found", 413: "too_large"}.get(exc.status, "bad_request")
            raise _Refused(kind, exc.message, "bad_request") from None
        req.info = info
        if len(info.model) > MAX_MODEL_NAME:
            raise _Refused(
                "bad_request", f"model name is {len(info.model)} characters long; at most {MAX_MODEL_NAME} are "
                "accepted. Send the model's id.", "bad_request"
            )
        if self._rt.routing is not None:
            # Before pricing: the bound, budgets and kill switches apply to the model served.
            req.routed = self._rt.routing.decide(
                req.key, route.protocol, route.route, info.model, req.headers, info.body, self.levels.percent
            )
            if req.routed is not None:
                proto.set_model(info, req.routed.model)
        price = self.prices.lookup(info.model)
        if price is None and not self.config.pricing.allow_unpriced:
            raise _Refused(
                "unpriced_model",
                f"model {info.model!r} has no known price, so its spend cannot be metered or capped; add it under "
                "`prices:` in the gateway config (USD per million tokens) or set pricing.allow_unpriced: true",
                "refused",
            )
        req.price = price
        req.forward_headers, options = forwardable(route.protocol, req.headers)
        self._check_billable_extras(
            info, price, options, req.headers.get("anthropic-beta") if route.protocol == "anthropic" else None
        )
        key = req.key
        ctx = RequestContext(
            key.name, key.principal, key.workflow, req.session, self.prices.canonical(info.model), route.protocol,
            key.team, tuple(key.tags),
        )
        req.ctx = ctx
        killed = self.kills.check(ctx) if self.kills is not None else None
        if killed is not None:
            scope_desc = "all traffic" if killed.scope == "all" else f"{killed.scope} {killed.value!r}"
            raise _Refused(
                "killed",
                f"tokenfuse kill switch: {scope_desc} is stopped"
                + (f" ({killed.reason})" if killed.reason else "")
                + ". Do not retry; an operator must run `tokenfuse revive`.",
                "killed",
                f"kill switch {killed.scope}={killed.value}: {killed.reason or ''}".strip(),
            )
        changed = self._enforce_max_tokens(proto, info)
        if info.stream and route.route == "chat.completions" and not info.wants_usage_chunk:
            # The client did not ask for usage; ask on its behalf, the meter strips it again.
            proto.request_usage_in_stream(info)
            changed = True
        # Before the body is encoded and bounded: injected breakpoints are forwarded and priced.
        self.caching.prepare(ctx, info)
        # Forward the canonical encoding of what was checked, never the client's
        # bytes: a duplicate key or an escape another parser reads differently
        # must not reach the provider.
        body = proto.encode_body(info)
        del changed
        upstream = self.router.pick(route.protocol, info.model)
        if upstream is None:
            raise _Refused(
                "not_found",
                f"no upstream is configured for {route.protocol} model {info.model!r}; add one under `upstreams:`",
                "refused",
            )
        if self.guards is not None and (looping := self.guards.check(ctx, info, req.body)) is not None:
            raise _Refused("session_cap", looping, "refused", "guard loop")
        if self.limiter is not None and route.route not in ZERO_COST_ROUTES:
            # An unpriced model (allowed explicitly) still counts against request,
            # token and session limits; only its dollar bound is unknown.
            # The bound is tightened by a recorded conversation prefix; the limiter
            # may lower max_tokens to fit the budget (docs/limits.md).
            d, caps = self.config.defaults, self.config.session_caps(key, key.workflow)
            planned = plan_bound(
                info, price or _UNPRICED, scope=key.principal, floor=d.min_output_tokens,
                prefixes=self.limiter.prefixes if self.limiter.applies(ctx, caps) else None,
                lower=d.lower_max_tokens if key.lower_max_tokens is None else key.lower_max_tokens,
            )
            bound = req.bound = planned.bound
            admission = await self.limiter.reserve(
                ctx, bound, session_caps=caps, fit=planned.fit, remember=planned.remember
            )
            if not admission.ok:
                ref = admission.refusal
                assert ref is not None
                if ref.kind == "budget":
                    await self._alert_refusal(ref.budget, bound.usd)
                raise _Refused(ref.kind, ref.message, "refused", f"{ref.kind} {ref.budget}")
            req.admission = admission
            if admission.bound is not None and admission.bound.lowered_from is not None:
                assert admission.bound.max_tokens is not None
                proto.set_max_tokens(info, admission.bound.max_tokens)
                body = proto.encode_body(info)
                bound = req.bound = admission.bound
            if self.journal is not None:
                self.journal.admit(incomplete_row(
                    ts=time.time(), request_id=req.id, key_name=key.name, principal=key.principal,
                    workflow=key.workflow, session=req.session, protocol=route.protocol, route=route.route,
                    model=ctx.model, upstream=upstream.name, bound_usd=bound.usd,
                    bound_input=bound.tokens.get("input_uncached", 0), bound_output=bound.tokens.get("output", 0),
                    team=key.team, tags=",".join(key.tags) or None,
                ))
        req.upstream = upstream
        await self._forward(req, upstream, body, send, receive)

    @staticmethod
    def _scoped_session(key: KeyConfig, session: str) -> str:
        """A session id belongs to the principal that sends it: Bob cannot spend Alice's session cap."""
        if len(session) > MAX_SESSION_ID or not session.isprintable():
            raise _Refused(
                "bad_request", f"x-tokenfuse-session must be at most {MAX_SESSION_ID} printable characters",
                "bad_request",
            )
        return f"{key.principal}/{session}"

    def _check_billable_extras(
        self, info: RequestInfo, price: Price | None, options: list[str], beta: str | None
    ) -> None:
        """Refuse what the provider can bill beyond the request's bound, unless the operator allows it."""
        pricing = self.config.pricing
        unbounded = list(info.unbounded)
        if not pricing.allow_unbounded and unbounded:
            raise _Refused(
                "bad_request",
                "this request uses features the provider bills beyond what the gateway can bound before "
                f"sending it: {'; '.join(unbounded)}. Send the full context yourself instead, or ask the "
                "operator to set pricing.allow_unbounded: true (spend from these features is then only "
                "metered after the fact)",
                "refused",
                f"unbounded: {'; '.join(unbounded)}",
            )
        priced = [*info.priced_options, *options]
        if beta:
            if "context-1m" in beta and (price is None or price.long_context is None):
                priced.append("anthropic-beta context-1m (long-context rates this gateway has no price for this model)")
            if "fast-mode" in beta:
                priced.append("anthropic-beta fast-mode (billed at a multiple of the standard rates)")
        if not pricing.allow_priced_options and priced:
            raise _Refused(
                "bad_request",
                f"this request asks for options billed at rates the gateway does not price: {'; '.join(priced)}. "
                "Leave them out, or ask the operator to set pricing.allow_priced_options: true",
                "refused",
                f"priced options: {'; '.join(priced)}",
            )

    def _enforce_max_tokens(self, proto: ModuleType, info: RequestInfo) -> bool:
        if info.route in ("embeddings", "count_tokens"):
            return False
        d = self.config.defaults
        if info.max_tokens is None:
            proto.set_max_tokens(info, d.max_tokens)
            return True
        if info.max_tokens > d.max_tokens_cap:
            if d.on_cap == "refuse":
                raise _Refused(
                    "bad_request",
                    f"max_tokens {info.max_tokens} is above this gateway's cap of {d.max_tokens_cap}; "
                    f"ask for at most {d.max_tokens_cap}",
                    "bad_request",
                )
            proto.set_max_tokens(info, d.max_tokens_cap)
            return True
        return False

    async def _read_body(self, receive: Receive, req: _Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                req.outcome = "client_abort"
                raise _Refused("bad_request", "client disconnected before sending the body", "client_abort")
            part = message.get("body", b"")
            size += len(part)
            if size > self._max_body:
                raise _Refused(
                    "too_large",
                    f"request body is larger than the gateway's limit of {self._max_body} bytes "
                    "(server.max_body_bytes)",
                    "bad_request",
                )
            chunks.append(part)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @staticmethod
    def _public_url(scope: Scope, raw_path: str, headers: dict[str, str]) -> str:
        # SigV4 signs the URL the client used: scheme, Host header and encoded path.
        host = headers.get("host", "")
        query = scope.get("query_string", b"").decode("latin-1")
        return f"{scope.get('scheme', 'http')}://{host}{raw_path}" + (f"?{query}" if query and "?" not in raw_path else "")

    # -- forwarding ----------------------------------------------------------------

    def _upstream_request(self, req: _Request, upstream: Upstream, body: bytes) -> tuple[str, dict[str, str]]:
        route = req.route
        assert route is not None and req.info is not None
        if route.protocol == "bedrock":
            path = bedrock_path(req.info.model, route.bedrock_action or "converse")
        else:
            path = route.upstream_path
        url = upstream.url(path)
        headers = dict(req.forward_headers)
        headers["accept-encoding"] = "identity"
        headers.update(upstream.config.headers)
        headers = upstream.auth_headers("POST", url, headers, body)
        return url, headers

    async def _forward(self, req: _Request, upstream: Upstream, body: bytes, send: Send, receive: Receive) -> None:
        assert self.http is not None and req.info is not None
        try:
            url, headers = self._upstream_request(req, upstream, body)
        except NoUpstream as exc:
            raise _Refused("upstream_unavailable", str(exc), "upstream_error") from None
        t0 = time.perf_counter()
        try:
            resp = await self.http.post(url, body, headers)
        except ConnectError as exc:
            # No connection was made, so the provider never saw the request: nothing to bill.
            raise _Refused(
                "upstream_unavailable",
                f"upstream {upstream.name!r} is unreachable ({type(exc).__name__}); try again later",
                "upstream_error",
            ) from None
        except TimeoutError:
            # The request went out; the provider may be generating it now and will bill it.
            await self._charge_bound(req, "upstream timed out after the request was sent; charged at the bound")
            raise _Refused(
                "upstream_timeout", f"upstream {upstream.name!r} did not answer in time", "upstream_error"
            ) from None
        except ConnectionBroken as exc:
            await self._charge_bound(
                req, f"upstream connection failed after the request was sent ({type(exc).__name__}); "
                "charged at the bound"
            )
            raise _Refused(
                "upstream_failed",
                f"upstream {upstream.name!r} broke the connection after the request was sent "
                f"({type(exc).__name__}); it may have been billed, so do not retry blindly",
                "upstream_error",
            ) from None
        try:
            if req.info.stream and resp.status == 200:
                await self._relay_stream(req, resp, t0, send, receive)
            else:
                await self._relay_whole(req, resp, t0, send)
        finally:
            resp.release()

    async def _charge_bound(self, req: _Request, reason: str) -> None:
        """Settle at the reserved bound: the outcome hides what the provider billed, never above it."""
        bound = req.bound
        req.reason = reason
        if bound is None:
            # No budget applied (nothing reserved); record the bound for the ledger all the same.
            if req.info is not None:
                req.usage = self._bound_usage(req)
                self._price(req)
            return
        t = bound.tokens
        req.usage = Usage(input_uncached=t["input_uncached"], output=t["output"], estimated=True)
        req.cost = bound.usd
        if req.admission is not None and self.limiter is not None:
            await self.limiter.settle(req.admission, req.usage, req.cost)
            req.admission = None

    def _response_headers(self, req: _Request, resp: Response) -> list[tuple[bytes, bytes]]:
        out = [
            (k.lower().encode("latin-1"), v.encode("latin-1"))
            for k, v in resp.headers
            if k.lower() not in DROP_RESPONSE_HEADERS
        ]
        out.append((b"x-tokenfuse-request-id", req.id.encode()))
        if req.routed is not None:
            out.append((ROUTED_HEADER, req.routed.header().encode("latin-1")))
        if req.bound is not None and req.bound.lowered_from is not None:
            out.append((b"x-tokenfuse-max-tokens", f"{req.bound.max_tokens}; requested={req.bound.lowered_from}".encode()))
        return out

    async def _relay_whole(self, req: _Request, resp: Response, t0: float, send: Send) -> None:
        assert req.info is not None and req.route is not None
        try:
            data = await resp.read()
        except TimeoutError:
            await self._charge_bound(req, "upstream timed out sending the response; charged at the bound")
            raise _Refused("upstream_timeout", "upstream timed out sending the response", "upstream_error") from None
        except ConnectionBroken:
            await self._charge_bound(req, "upstream broke the connection mid-response; charged at the bound")
            raise _Refused(
                "upstream_failed", "upstream broke the connection mid-response; it may have been billed, "
                "so do not retry blindly", "upstream_error"
            ) from None
        req.upstream_ms = (time.perf_counter() - t0) * 1000
        req.status = resp.status
        usage = None
        if resp.status < 400:
            lower = {k.lower(): v for k, v in resp.headers} if req.route.protocol == "bedrock" else {}
            usage = PROTOCOLS[req.route.protocol].usage_from_response(req.route.route, data, lower)
        if resp.status >= 400:
            req.outcome = "upstream_error"
            req.reason = f"upstream status {resp.status}"
        elif usage is None and req.route.route not in ZERO_COST_ROUTES:
            # A 2xx without usage cannot be priced exactly: settle at the bound.
            req.outcome = "ok"
            req.reason = "upstream reported no usage; recorded the upper bound"
            usage = self._bound_usage(req)
        if usage is not None:
            req.usage = usage
            self._price(req)
        headers = self._response_headers(req, resp)
        headers.append((b"x-tokenfuse-cost-usd", format_cost(req.cost).encode()))
        headers.append((b"content-length", str(len(data)).encode()))
        try:
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            await send({"type": "http.response.body", "body": data})
        finally:
            # The client has its answer; the reservation keeps the cap safe until
            # this settles, so the counter round trip need not delay the response.
            if usage is not None:
                await self._settle(req)
            elif req.admission is not None and self.limiter is not None:
                await self.limiter.release(req.admission)
                req.admission = None

    def _bound_usage(self, req: _Request) -> Usage:
        """What a request is recorded at when its usage is unknown: its reserved bound."""
        if req.bound is not None:
            t = req.bound.tokens
            return Usage(input_uncached=t["input_uncached"], output=t["output"], estimated=True)
        info = req.info
        assert info is not None
        return Usage(
            input_uncached=info.prompt_bytes, output=(info.max_tokens or 0) * info.choices, estimated=True
        )

    def _price(self, req: _Request) -> None:
        if req.route is None or req.route.route in ZERO_COST_ROUTES:
            return
        if req.usage.estimated and req.bound is not None:
            # Unknown usage is charged what was reserved: the bound prices every input
            # token at the dearest class, which pricing the estimate would not.
            req.cost = req.bound.usd
        elif req.price is not None:
            req.cost = req.price.cost(req.usage)

    def _overran(self, req: _Request, output: int) -> None:
        """The upstream generated more than max_tokens: no bound of its requests holds any more.

        Stop sending it this model (a kill switch an operator can see and revive)
        rather than let every following request overshoot its reservation.
        """
        assert req.bound is not None and req.ctx is not None
        reason = (
            f"upstream {req.upstream.name if req.upstream else '?'} returned {output} output tokens for a request "
            f"limited to {req.bound.tokens['output']}; its spend can no longer be bounded (request {req.id})"
        )
        req.reason = f"{req.reason}; {reason}" if req.reason else reason
        if self.watcher is not None:
            self.watcher.trip("model", req.ctx.model, reason)

    async def _settle(self, req: _Request) -> None:
        self._priced(req)
        await self._settle_counters(req)

    def _priced(self, req: _Request) -> None:
        """Price the metered usage; an answer past its reserved output stops the model."""
        self._price(req)
        if (
            req.bound is not None and not req.usage.estimated
            and req.usage.output > req.bound.tokens["output"] and req.route is not None
            and req.route.route not in ZERO_COST_ROUTES
        ):
            self._overran(req, req.usage.output)

    async def _settle_counters(self, req: _Request) -> None:
        if req.admission is not None and self.limiter is not None:
            await self.limiter.settle(req.admission, req.usage, req.cost)
            req.admission = None

    async def _relay_stream(
        self, req: _Request, resp: Response, t0: float, send: Send, receive: Receive
    ) -> None:
        assert req.info is not None and req.route is not None
        meter = PROTOCOLS[req.route.protocol].StreamMeter(req.info)
        req.status = resp.status
        await send({"type": "http.response.start", "status": resp.status, "headers": self._response_headers(req, resp)})
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = spawn(watch())
        complete = False
        broke: str | None = None
        client_gone = False
        out_bound = req.bound.tokens["output"] if req.bound is not None else None
        overran = False
        try:
            async for chunk in resp.iter_chunks():
                out = meter.feed(chunk)
                if out_bound is not None and meter.text_events > out_bound:
                    # Each text event holds at least one token: the upstream is past the
                    # output that was reserved. Stop reading so it stops generating.
                    overran = True
                    break
                if client_gone:
                    continue
                if disconnected.is_set():
                    client_gone = True
                    continue
                if out:
                    try:
                        await send({"type": "http.response.body", "body": out, "more_body": True})
                    except OSError:
                        client_gone = True
            else:
                complete = True
        except (TimeoutError, ConnectionBroken) as exc:
            broke = f"upstream stream broke ({type(exc).__name__})"
        finally:
            watcher.cancel()
        # A client that hangs up does not stop the provider billing the generation,
        # so the gateway reads the stream to its end (without relaying it) to learn
        # the exact usage; only if that fails too is the request charged its bound.
        client_gone = client_gone or disconnected.is_set()
        req.upstream_ms = (time.perf_counter() - t0) * 1000
        if overran:
            resp.close()
            assert req.bound is not None
            await self._charge_bound(req, "stream cut: the upstream overran the reserved output")
            req.usage.output = max(req.usage.output, meter.text_events)
            self._overran(req, req.usage.output)
            req.outcome = "upstream_error"
            raise _StreamAborted(req.reason or "overran")
        usage = meter.usage(complete and broke is None)
        if broke is not None or usage.estimated:
            why = broke or "stream ended without the provider's final usage"
            await self._charge_bound(req, f"{why}; charged at the bound")
            if client_gone:
                req.outcome = "client_abort"
                req.reason = f"client disconnected mid-stream; {req.reason}"
                return
            req.outcome = "upstream_error"
            # Aborting the connection is how the client learns the stream is incomplete.
            raise _StreamAborted(req.reason or why)
        req.usage = usage
        self._priced(req)
        # The reservation keeps the cap safe until this settles, so the client gets
        # its last event without waiting for the counter round trip.
        try:
            if client_gone:
                req.outcome, req.reason = (
                    "client_abort", "client disconnected mid-stream; metered to the end of the stream"
                )
                return
            tail = meter.finish()
            trailer = b""
            if req.route.protocol in ("openai", "anthropic"):
                # An SSE comment: ignored by every SSE client, readable by humans and tools.
                trailer = f": x-tokenfuse-cost-usd={format_cost(req.cost)} request-id={req.id}\n\n".encode()
            try:
                await send({"type": "http.response.body", "body": tail + trailer, "more_body": False})
            except OSError:
                req.outcome, req.reason = "client_abort", "client disconnected at the end of the stream"
        finally:
            await self._settle_counters(req)

    async def _send_whole(
        self, send: Send, req: _Request, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        raw.append((b"x-tokenfuse-request-id", req.id.encode()))
        if req.routed is not None:
            raw.append((ROUTED_HEADER, req.routed.header().encode("latin-1")))
        raw.append((b"content-length", str(len(body)).encode()))
        try:
            await send({"type": "http.response.start", "status": status, "headers": raw})
            await send({"type": "http.response.body", "body": body})
        except OSError:
            req.outcome = "client_abort"

    def _record(self, req: _Request) -> None:
        now = time.perf_counter()
        latency = (now - req.started) * 1000
        info, key, u = req.info, req.key, req.usage
        row = LedgerRow(
            ts=time.time(),
            request_id=req.id,
            key_name=key.name if key else None,
            principal=key.principal if key else None,
            workflow=key.workflow if key else None,
            session=req.session,
            protocol=req.protocol,
            route=req.route.route if req.route else None,
            # The canonical id, so every spelling of a model groups together;
            # refused oversized names are cut so request data cannot grow the ledger.
            model=req.ctx.model if req.ctx is not None else (info.model[:MAX_MODEL_NAME] if info else None),
            upstream=req.upstream.name if req.upstream else None,
            status=req.status,
            input_uncached=u.input_uncached,
            cache_read=u.cache_read,
            cache_write=u.cache_write,
            cache_write_1h=u.cache_write_1h,
            output=u.output,
            cost_usd=req.cost,
            latency_ms=latency,
            overhead_ms=max(latency - req.upstream_ms, 0.0),
            estimated=u.estimated,
            outcome=req.outcome,
            reason=req.reason[:1000] if req.reason else None,
            team=key.team if key else None,
            tags=(",".join(key.tags) or None) if key else None,
            requested_model=self.prices.canonical(req.routed.requested) if req.routed is not None else None,
        )
        if req.outcome == "ok" and info is not None:
            row.cache_saved_usd = cache_saved_usd(req.price, u, req.cost)
            fp = self.caching.print_of(info)
            row.prefix_fp = fp.encode() if fp is not None else None
        self.ledger.write(row)
        self._observe(row)


class _StreamAborted(Exception):
    """The stream cannot be completed: end the response unfinished so the server drops the connection."""
