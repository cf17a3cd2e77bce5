"""The operations endpoints as one raw ASGI app: probes, metrics, the model list.

The gateway hands it every path in :data:`OPS_PATHS` (and ``/v1/models/<id>``)
before its metered pipeline, so none of these requests is metered, limited or
written to the ledger. Only ``GET`` and ``HEAD`` are served.

=========================  ==========================================  =======================
path                       answers                                     auth
=========================  ==========================================  =======================
``/``                      200 ``{"service": "tokenfuse", ...}``       none
``/healthz``               200 while the process serves                none
``/readyz``                200, or 503 with the reason                 none
``/metrics``               Prometheus exposition                       admin token, if set [1]
``/v1/models[/<id>]``      OpenAI or Anthropic model list              the caller's key
=========================  ==========================================  =======================

[1] unless ``server.metrics_public: true``; with no admin token configured it is open.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector

from tokenfuse import __version__
from tokenfuse.asgi import Receive, Scope, Send
from tokenfuse.gateway.identity import AuthError
from tokenfuse.ops import models as m
from tokenfuse.ops.gauges import ControlState, control_metrics
from tokenfuse.ops.metrics import RequestMetrics
from tokenfuse.ops.probes import Readiness
from tokenfuse.protocols.errors import refusal

log = logging.getLogger("tokenfuse.ops")

OPS_PATHS = frozenset({"/", "/healthz", "/readyz", "/metrics", "/v1/models"})
MODEL_PREFIX = "/v1/models/"
SNAPSHOT_TIMEOUT_S = 2.0
_JSON = (b"content-type", b"application/json")
_NO_STORE = (b"cache-control", b"no-store")


class _Collector:
    """Adapts the gateway's metrics to prometheus_client's collector interface."""

    def __init__(self, requests: RequestMetrics) -> None:
        self.requests = requests
        self.state = ControlState()

    def collect(self) -> Any:
        yield from self.requests.collect()
        yield from control_metrics(self.state)


class OpsApp:
    """``gateway`` is the :class:`tokenfuse.gateway.app.Gateway`; its limiter, kill
    switches and ledger are read at request time (they exist only after start-up)."""

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        config = gateway.config
        self.metrics = RequestMetrics()
        self._collector = _Collector(self.metrics)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self._collector)
        ProcessCollector(registry=self.registry)
        self._admin_token: str | None = config.server.admin_token
        self._metrics_public: bool = bool(getattr(config.server, "metrics_public", False))
        self.readiness = Readiness(
            started=lambda: gateway.limiter is not None and gateway.http is not None,
            store_url=config.store,
            counters_ping=self._counters_ping,
            fail_open=config.on_counter_failure == "open",
        )
        self._model_cache: dict[str, list[m.Listed]] = {}

    # -- ASGI -------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            await _send(send, 405, _json({"error": f"{method} is not allowed on {path}; use GET"}), head,
                        [(b"allow", b"GET, HEAD")])
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            if path == "/healthz":
                await _send(send, 200, _json({"status": "ok"}), head)
            elif path == "/readyz":
                ready, body = await self.readiness.check()
                await _send(send, 200 if ready else 503, _json(body), head)
            elif path == "/metrics":
                await self._metrics(send, headers, head)
            elif path == "/":
                body = {"service": "tokenfuse", "version": __version__, "docs": "docs/operations.md"}
                await _send(send, 200, _json(body), head)
            else:
                await self._models(scope, send, headers, path, head)
        except OSError:  # the client went away mid-answer
            pass

    # -- /metrics ---------------------------------------------------------------

    async def _metrics(self, send: Send, headers: dict[str, str], head: bool) -> None:
        if self._admin_token and not self._metrics_public:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._admin_token.encode()):
                body = {"error": "GET /metrics needs `Authorization: Bearer <server.admin_token>` (or set "
                                 "server.metrics_public: true to open it)"}
                await _send(send, 401, _json(body), head, [(b"www-authenticate", b"Bearer")])
                return
        self._collector.state = await self._control_state()
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        await _send(send, 200, encoder(self.registry), head, [(b"content-type", content_type.encode())])

    async def _control_state(self) -> ControlState:
        gw = self.gateway
        state = ControlState()
        if gw.limiter is not None:
            try:
                state.budgets = await asyncio.wait_for(gw.limiter.snapshot(), SNAPSHOT_TIMEOUT_S)
            except Exception as exc:  # CountersUnavailable or a timeout: report it, serve the rest
                state.counters_error = str(exc) or type(exc).__name__
        if gw.kills is not None:
            state.kill_scopes = [k.scope for k in gw.kills.active()]
        ledger = gw.ledger
        state.ledger_pending = ledger.pending
        state.ledger_written = ledger.rows_written
        state.ledger_errors = ledger.errors
        state.ledger_rejected = ledger.rows_rejected
        return state

    def _counters_ping(self) -> Any:
        # Only Redis counters can be unreachable; the limiter keeps its client private.
        redis = getattr(self.gateway.limiter, "_redis", None)
        return None if redis is None else redis.ping()

    # -- /v1/models ----------------------------------------------------------------

    async def _models(self, scope: Scope, send: Send, headers: dict[str, str], path: str, head: bool) -> None:
        gw = self.gateway
        protocol = "anthropic" if "anthropic-version" in headers else "openai"
        try:
            gw.keys.identify(headers, scope["method"], lambda: _url(scope, path, headers), b"")
        except AuthError as exc:
            await self._refuse(send, protocol, "unauthorized", exc.message, head)
            return
        listed = self._available(protocol)
        if path == "/v1/models":
            if protocol == "anthropic":
                try:
                    page = m.anthropic_page(listed, scope.get("query_string", b"").decode("latin-1"))
                except m.BadQuery as exc:
                    await self._refuse(send, protocol, "bad_request", str(exc), head)
                    return
                await _send(send, 200, _json(page), head)
            else:
                await _send(send, 200, _json(m.openai_list(listed)), head)
            return
        wanted = path[len(MODEL_PREFIX):]
        found = next((x for x in listed if x.id == wanted), None)
        if found is None:
            await self._refuse(send, protocol, "not_found",
                               f"model {wanted!r} is not available through this gateway; GET /v1/models lists "
                               "what is", head)
            return
        body = m.anthropic_model(found) if protocol == "anthropic" else m.openai_model(found)
        await _send(send, 200, _json(body), head)

    def _available(self, protocol: str) -> list[m.Listed]:
        hit = self._model_cache.get(protocol)
        if hit is None:
            gw = self.gateway
            hit = self._model_cache[protocol] = m.available(
                protocol, list(gw.config.prices), lambda p, model: gw.router.pick(p, model) is not None
            )
        return hit

    @staticmethod
    async def _refuse(send: Send, protocol: str, kind: str, message: str, head: bool) -> None:
        status, hdrs, body = refusal(protocol, kind, message)
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in hdrs]
        await _send(send, status, body, head, raw)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _url(scope: Scope, path: str, headers: dict[str, str]) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return f"{scope.get('scheme', 'http')}://{headers.get('host', '')}{path}" + (f"?{query}" if query else "")


async def _send(
    send: Send, status: int, body: bytes, head: bool, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [_NO_STORE, (b"content-length", str(len(body)).encode())]
    extra = extra or []
    if not any(k == b"content-type" for k, _ in extra):
        headers.append(_JSON)
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
