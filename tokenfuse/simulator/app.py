"""The provider simulator: one raw ASGI app speaking the OpenAI, Anthropic and
Bedrock runtime wire formats, with deterministic usage, latency and faults,
and a record of exactly what it served (``GET /_sim/served``).

Per-request controls are headers (``x-sim-output-tokens``,
``x-sim-latency-ms``, ``x-sim-reasoning-tokens``, ``x-sim-fault``,
``x-sim-bill-abandoned``, ``x-sim-overrun-factor``, ``x-sim-server-tool-tokens``,
``x-sim-json-duplicates``), a model
name containing ``sim-fault-<fault>``, or the run-time settings posted to
``/_sim/config`` (for clients such as boto3 that cannot easily add headers).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from itertools import count
from typing import Any
from urllib.parse import unquote

from tokenfuse.aio import spawn
from tokenfuse.asgi import Receive, Scope, Send
from tokenfuse.simulator import prompts, wire_anthropic, wire_bedrock, wire_openai
from tokenfuse.simulator.prompts import BadRequest
from tokenfuse.simulator.reply import Reply, StreamPlan, dumps
from tokenfuse.simulator.state import FAULTS, JSON_DUPLICATES, ConfigError, Served, ServedLog, SimConfig
from tokenfuse.simulator.tokens import (
    Block,
    PromptCache,
    automatic_input,
    generated_text,
    marked_input,
    prompt_tokens,
    provider_marked_input,
)
from tokenfuse.usage import Usage

JSON = Any

_JSON_TYPE = (b"content-type", b"application/json")
_SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")
_EVENTSTREAM_TYPE = (b"content-type", b"application/vnd.amazon.eventstream")
_BEDROCK_OPS = {
    "converse": False,
    "converse-stream": True,
    "invoke": False,
    "invoke-with-response-stream": True,
    "count-tokens": False,
}
_GARBAGE_SSE = b'data: {"id": "chatcmpl-garb\xff\xfe\n\n'
# A prelude whose CRC cannot match: any event-stream reader must reject it.
_GARBAGE_FRAMES = b"\x00\x00\x00\x20\x00\x00\x00\x00\xde\xad\xbe\xef" + b"\x00" * 20
# Stored Responses kept for previous_response_id (oldest forgotten first).
STORED_RESPONSES = 10_000


class SimFault(Exception):
    """Raised inside a handler when the request must fail with an error status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


@dataclass(slots=True)
class Call:
    """One request as the simulator sees it."""

    protocol: str
    route: str
    headers: dict[bytes, bytes]
    auth: str
    request_id: str
    model: str = ""
    stream: bool = False
    fault: str | None = None
    content_type: tuple[bytes, bytes] = _JSON_TYPE
    server_tool_uses: int = 0
    bill_abandoned: bool = False


@dataclass(slots=True)
class Answer:
    """What a handler produced: the billed usage and a body or a stream."""

    usage: Usage
    body: bytes = b""
    plan: StreamPlan | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


Handler = Callable[[Call, JSON], Callable[[], Answer]]


def _auth_style(headers: dict[bytes, bytes]) -> str:
    authorization = headers.get(b"authorization", b"")
    if authorization.startswith(b"AWS4-HMAC-SHA256"):
        return "sigv4"
    if authorization[:7].lower() == b"bearer ":
        return "bearer"
    if b"x-api-key" in headers or b"api-key" in headers:
        return "x-api-key"
    return "none"


def _header_int(headers: dict[bytes, bytes], name: bytes) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"header {name.decode()} must be an integer") from None
    if value < 0:
        raise BadRequest(f"header {name.decode()} must not be negative")
    return value


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Simulator:
    """The ASGI application. ``served`` and ``config`` may be inspected and
    changed in-process (tests) or over ``/_sim/*`` (other processes)."""

    def __init__(self, config: SimConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.defaults = config or SimConfig()
        self.config = replace(self.defaults)
        self.served = ServedLog()
        self.cache = PromptCache(clock)
        # Response id -> the context tokens a follow-up inherits (its input
        # and output), for previous_response_id.
        self.stored: OrderedDict[str, int] = OrderedDict()
        self._ids = count(1)
        self._routes: dict[str, tuple[str, str, Handler]] = {
            "/v1/chat/completions": ("openai", "chat.completions", self._chat),
            "/v1/responses": ("openai", "responses", self._responses),
            "/v1/embeddings": ("openai", "embeddings", self._embeddings),
            "/v1/messages": ("anthropic", "messages", self._messages),
            "/v1/messages/count_tokens": ("anthropic", "count_tokens", self._count_tokens),
        }

    def reset(self) -> None:
        self.served.clear()
        self.cache.clear()
        self.stored.clear()
        self.config = replace(self.defaults)

    # --- ASGI entry ---------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        headers = dict(scope["headers"])
        if path.startswith("/_sim/"):
            await self._control(scope["method"], path, await _read_body(receive), send)
            return
        request_id = f"{next(self._ids):024x}"
        auth = _auth_style(headers)
        route = self._routes.get(path)
        if route is None and path.startswith("/model/"):
            model, bedrock_op = _bedrock_target(scope)
            handler: Handler | None = self._bedrock if bedrock_op in _BEDROCK_OPS else None
            call = Call("bedrock", bedrock_op, headers, auth, request_id, model=model)
        elif route is not None:
            handler = route[2]
            call = Call(route[0], route[1], headers, auth, request_id)
        else:
            handler = None
            protocol = "anthropic" if b"anthropic-version" in headers else "openai"
            call = Call(protocol, path, headers, auth, request_id)
        raw = await _read_body(receive)
        if handler is None or scope["method"] != "POST":
            message = f"Invalid URL ({scope['method']} {path})"
            await self._refuse(call, send, SimFault(404, message))
            return
        try:
            body = prompts.parse_body(raw, self._json_duplicates(call))
            produce = handler(call, body)
            call.bill_abandoned = self._bill_abandoned(call)
            call.fault = self._fault(call)
            if call.fault in ("500", "429"):
                raise SimFault(int(call.fault), f"simulated {call.fault} fault")
            answer = produce()
        except BadRequest as exc:
            await self._refuse(call, send, SimFault(400, str(exc), exc.param, exc.code))
            return
        except SimFault as exc:
            await self._refuse(call, send, exc)
            return
        latency = self._latency(call)
        if latency:
            if not call.bill_abandoned:
                await asyncio.sleep(latency / 1000)
            elif await _left_during(latency / 1000, receive):
                # The generation ran its course although the client gave up
                # waiting for it: billed in full, nothing sent.
                self._record(call, answer.usage, 0, False, abandoned=True)
                return
        if call.stream and answer.plan is not None:
            await self._send_stream(call, answer, receive, send)
        else:
            await self._send_body(call, answer, receive, send)

    # --- decisions ------------------------------------------------------------

    def _fault(self, call: Call) -> str | None:
        raw = call.headers.get(b"x-sim-fault")
        if raw is not None:
            fault = raw.decode()
            if fault not in FAULTS:
                raise BadRequest(f"x-sim-fault must be one of {', '.join(FAULTS)}")
            return fault
        if "sim-fault-" in call.model:
            for fault in FAULTS:
                if f"sim-fault-{fault}" in call.model:
                    return fault
        return self.config.take_fault()

    def _latency(self, call: Call) -> int:
        value = _header_int(call.headers, b"x-sim-latency-ms")
        return self.config.latency_ms if value is None else value

    def _bill_abandoned(self, call: Call) -> bool:
        value = _header_int(call.headers, b"x-sim-bill-abandoned")
        return self.config.bill_abandoned if value is None else value > 0

    def _server_tool_tokens(self, call: Call) -> int:
        value = _header_int(call.headers, b"x-sim-server-tool-tokens")
        return self.config.server_tool_tokens if value is None else value

    def _json_duplicates(self, call: Call) -> str:
        raw = call.headers.get(b"x-sim-json-duplicates")
        if raw is None:
            return self.config.json_duplicates
        value = raw.decode("latin-1")
        if value not in JSON_DUPLICATES:
            raise BadRequest(f"x-sim-json-duplicates must be one of {', '.join(JSON_DUPLICATES)}")
        return value

    def _output(self, call: Call, limit: int | None) -> tuple[int, bool]:
        """Output tokens (per choice) and whether the request's limit is
        where they stopped."""
        factor = _header_int(call.headers, b"x-sim-overrun-factor")
        if factor is None:
            factor = self.config.overrun_factor
        if factor > 1 and limit is not None:
            # A misbehaving upstream: the limit is ignored, the answer runs on.
            return limit * factor, True
        wanted = self.config.output_tokens
        header = _header_int(call.headers, b"x-sim-output-tokens")
        if header is not None:
            wanted = min(wanted, header)
        if limit is not None and limit < wanted:
            return limit, True
        return wanted, False

    def _reply(
        self,
        call: Call,
        usage: Usage,
        limit: int | None,
        prefix: str,
        reasoning: bool = False,
        choices: int = 1,
        server_tools: dict[str, int] | None = None,
    ) -> Reply:
        output, truncated = self._output(call, limit)
        hidden = 0
        if reasoning:
            header = _header_int(call.headers, b"x-sim-reasoning-tokens")
            hidden = min(output, self.config.reasoning_tokens if header is None else header)
        usage.output = output * choices
        tool_use: tuple[tuple[str, int], ...] = ()
        extra = self._server_tool_tokens(call)
        if server_tools and extra:
            # The tools ran: their results are read as input, per use.
            call.server_tool_uses = sum(server_tools.values())
            usage.input_uncached += extra * call.server_tool_uses
            tool_use = tuple(server_tools.items())
        return Reply(
            id=prefix + call.request_id,
            model=call.model,
            usage=usage,
            text=generated_text(output - hidden),
            reasoning=hidden * choices,
            truncated=truncated,
            chunk_tokens=self.config.chunk_tokens,
            created=int(time.time()),
            latency_ms=self._latency(call),
            choices=choices,
            server_tool_use=tool_use,
        )

    # --- OpenAI ---------------------------------------------------------------

    def _chat(self, call: Call, body: JSON) -> Callable[[], Answer]:
        text = prompts.chat_text(body)
        call.model = prompts.model_of(body)
        call.stream = body.get("stream") is True
        limit = prompts.chat_limit(body)
        choices = prompts.chat_choices(body)
        with_usage = prompts.include_usage(body)
        padded = prompts.include_obfuscation(body)

        def produce() -> Answer:
            usage = automatic_input("openai\0" + call.model, text, self.cache)
            reply = self._reply(call, usage, limit, "chatcmpl-", reasoning=True, choices=choices)
            if call.stream:
                call.content_type = _SSE_TYPE
                return Answer(usage, plan=wire_openai.chat_stream(reply, with_usage, padded))
            return Answer(usage, body=wire_openai.chat_body(reply))

        return produce

    def _responses(self, call: Call, body: JSON) -> Callable[[], Answer]:
        text = prompts.responses_text(body)
        call.model = prompts.model_of(body)
        call.stream = body.get("stream") is True
        limit = prompts.responses_limit(body)
        previous = prompts.previous_response(body)
        if previous is not None and previous not in self.stored:
            raise BadRequest(
                f"Previous response with id '{previous}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        tools = prompts.responses_server_tools(body)

        def produce() -> Answer:
            usage = automatic_input("openai\0" + call.model, text, self.cache)
            if previous is not None:
                # The stored conversation is read again as input, as OpenAI bills it.
                usage.input_uncached += self.stored.get(previous, 0)
            reply = self._reply(call, usage, limit, "resp_", reasoning=True, server_tools=tools)
            if body.get("store") is not False:
                self._store(reply.id, usage.input_total + usage.output)
            if call.stream:
                call.content_type = _SSE_TYPE
                plan = wire_openai.responses_stream(reply, body, prompts.include_obfuscation(body))
                return Answer(usage, plan=plan)
            return Answer(usage, body=wire_openai.responses_body(reply, body))

        return produce

    def _embeddings(self, call: Call, body: JSON) -> Callable[[], Answer]:
        inputs = prompts.embedding_inputs(body)
        call.model = prompts.model_of(body)
        dimensions = body.get("dimensions")
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
            dimensions = self.config.embedding_dimensions
        as_base64 = body.get("encoding_format") == "base64"

        def produce() -> Answer:
            tokens = sum(inputs)
            payload = wire_openai.embeddings_body(call.model, tokens, len(inputs), dimensions, as_base64)
            return Answer(Usage(input_uncached=tokens), body=payload)

        return produce

    # --- Anthropic ------------------------------------------------------------

    def _messages(self, call: Call, body: JSON) -> Callable[[], Answer]:
        blocks = prompts.anthropic_blocks(body)
        call.model = prompts.model_of(body)
        call.stream = body.get("stream") is True
        limit = prompts.anthropic_limit(body)
        tools = prompts.anthropic_server_tools(body)

        def produce() -> Answer:
            usage = self._marked("anthropic", call.model, blocks, per_segment=False)
            reply = self._reply(call, usage, limit, "msg_sim", server_tools=tools)
            if call.stream:
                call.content_type = _SSE_TYPE
                return Answer(usage, plan=wire_anthropic.message_stream(reply))
            return Answer(usage, body=wire_anthropic.message_body(reply))

        return produce

    def _marked(self, protocol: str, model: str, blocks: list[Block], *, per_segment: bool) -> Usage:
        namespace = f"{protocol}\0{model}"
        if self.config.cache_rules == "provider":
            minimum = prompts.cache_minimum(model)
            return provider_marked_input(namespace, blocks, self.cache, minimum, per_segment=per_segment)
        return marked_input(namespace, blocks, self.cache)

    def _store(self, response_id: str, context: int) -> None:
        self.stored[response_id] = context
        while len(self.stored) > STORED_RESPONSES:
            self.stored.popitem(last=False)

    def _count_tokens(self, call: Call, body: JSON) -> Callable[[], Answer]:
        blocks = prompts.anthropic_blocks(body, need_max_tokens=False)
        call.model = prompts.model_of(body)
        total = prompt_tokens(sum(len(b.text) for b in blocks))
        # Counting is free: nothing is billed and the cache is not touched.
        return lambda: Answer(Usage(), body=dumps({"input_tokens": total}))

    # --- Bedrock --------------------------------------------------------------

    def _bedrock_count_tokens(self, call: Call, body: dict[str, Any]) -> Callable[[], Answer]:
        """CountTokens: ``{"input": {"converse": {...}}}`` or ``{"input": {"invokeModel":
        {"body": base64}}}`` -> ``{"inputTokens": N}``; free, and the cache is not touched."""
        wrapped = body.get("input")
        if not isinstance(wrapped, dict) or len(wrapped) != 1 or not wrapped.keys() <= {"converse", "invokeModel"}:
            raise BadRequest("Malformed input request: input must hold exactly one of converse or invokeModel")
        if "converse" in wrapped:
            blocks = prompts.converse_blocks(wrapped["converse"])
        else:
            inner = wrapped["invokeModel"]
            raw = inner.get("body") if isinstance(inner, dict) else None
            try:
                decoded = json.loads(base64.b64decode(raw, validate=True)) if isinstance(raw, str) else None
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                raise BadRequest("Malformed input request: invokeModel.body must be a base64-encoded JSON object")
            family = _family(call.model, decoded)
            if family == "anthropic":
                blocks = prompts.anthropic_blocks(decoded, need_max_tokens=False)
            elif family == "nova":
                blocks = prompts.converse_blocks(decoded)
            else:
                blocks = [Block(prompts.llama_text(decoded))]
        total = prompt_tokens(sum(len(b.text) for b in blocks))
        return lambda: Answer(Usage(), body=dumps({"inputTokens": total}))

    def _bedrock(self, call: Call, body: JSON) -> Callable[[], Answer]:
        op = call.route
        call.stream = _BEDROCK_OPS[op]
        if not isinstance(body, dict):
            raise BadRequest("Malformed input request: the body must be a JSON object")
        if op == "count-tokens":
            return self._bedrock_count_tokens(call, body)
        if op.startswith("converse"):
            blocks = prompts.converse_blocks(body)
            limit = prompts.converse_limit(body)
            family = "converse"
        else:
            family = _family(call.model, body)
            if family == "anthropic":
                if body.get("anthropic_version") != "bedrock-2023-05-31":
                    raise BadRequest("Malformed input request: anthropic_version must be bedrock-2023-05-31")
                blocks = prompts.anthropic_blocks(body)
                limit = prompts.anthropic_limit(body)
            elif family == "nova":
                blocks = prompts.converse_blocks(body)
                limit = prompts.converse_limit(body)
            else:
                blocks = [Block(prompts.llama_text(body))]
                limit = prompts.llama_limit(body)
        cache_used = any(b.marker is not None for b in blocks)

        def produce() -> Answer:
            usage = self._marked("bedrock", call.model, blocks, per_segment=True)
            reply = self._reply(call, usage, limit, "")
            headers = [(b"x-amzn-requestid", call.request_id.encode())]
            if op == "converse":
                return Answer(usage, body=wire_bedrock.converse_body(reply), headers=headers)
            if op == "converse-stream":
                call.content_type = _EVENTSTREAM_TYPE
                return Answer(usage, plan=wire_bedrock.converse_stream(reply), headers=headers)
            if op == "invoke":
                headers += wire_bedrock.invoke_headers(reply, cache_used)
                return Answer(usage, body=wire_bedrock.invoke_body(family, reply), headers=headers)
            call.content_type = _EVENTSTREAM_TYPE
            headers.append((b"x-amzn-bedrock-content-type", b"application/json"))
            plan = wire_bedrock.invoke_stream(family, reply, reply.latency_ms)
            return Answer(usage, plan=plan, headers=headers)

        return produce

    # --- sending --------------------------------------------------------------

    def _record(
        self, call: Call, usage: Usage, status: int, complete: bool, *, abandoned: bool = False
    ) -> None:
        self.served.add(
            Served(
                protocol=call.protocol,
                route=call.route,
                model=call.model,
                stream=call.stream,
                auth=call.auth,
                usage=usage,
                status=status,
                complete=complete,
                request_id=call.request_id,
                fault=call.fault,
                billed_after_disconnect=abandoned,
                server_tool_uses=call.server_tool_uses,
            )
        )

    async def _refuse(self, call: Call, send: Send, fault: SimFault) -> None:
        status, headers, body = _error(call, fault)
        self._record(call, Usage(), status, True)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _id_header(self, call: Call) -> tuple[bytes, bytes]:
        if call.protocol == "openai":
            return (b"x-request-id", call.request_id.encode())
        if call.protocol == "anthropic":
            return (b"request-id", call.request_id.encode())
        return (b"x-amzn-requestid", call.request_id.encode())

    def _record_lost(self, call: Call, answer: Answer, seen: Usage, status: int) -> None:
        """Record an answer the client did not get whole: what it saw by
        default, the whole generation with ``bill_abandoned``."""
        if call.bill_abandoned:
            self._record(call, answer.usage, status, False, abandoned=True)
        else:
            self._record(call, seen, status, False)

    async def _send_body(self, call: Call, answer: Answer, receive: Receive, send: Send) -> None:
        body = answer.body
        headers = [call.content_type, self._id_header(call), *answer.headers]
        inputs = replace(answer.usage, output=0)
        if call.fault == "hang":
            self._record_lost(call, answer, inputs, 0)
            await _wait_disconnect(receive)
            return
        if call.fault == "garbage":
            body = body[: len(body) // 2] + b"\xff\xfe<garbage>"
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if call.fault == "break":
            # Fewer bytes than Content-Length, then the server drops the connection.
            self._record_lost(call, answer, inputs, 200)
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            return
        # Recorded before the last byte leaves, so a client that has its answer
        # always finds it in the record.
        if call.fault == "garbage":
            self._record_lost(call, answer, inputs, 200)
        else:
            self._record(call, answer.usage, 200, True)
        await send({"type": "http.response.body", "body": body})

    async def _send_stream(self, call: Call, answer: Answer, receive: Receive, send: Send) -> None:
        plan = answer.plan
        assert plan is not None
        headers = [call.content_type, self._id_header(call), *answer.headers]
        if call.protocol != "bedrock":
            headers.append((b"cache-control", b"no-cache"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        fault = call.fault
        frames = plan.frames if fault is None else plan.frames[: plan.break_at]
        # The last frame of a complete stream is held back until the record is
        # written, so a client that has its answer always finds it recorded.
        body_frames = frames[:-1] if fault is None else frames
        delay = self.config.chunk_delay_ms / 1000
        watcher = spawn(_wait_disconnect(receive)) if delay or call.bill_abandoned else None
        sent = 0
        try:
            for frame in body_frames:
                if watcher is not None and watcher.done():
                    break
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                sent += 1
                if delay:
                    await asyncio.sleep(delay)
        finally:
            if watcher is not None:
                watcher.cancel()
        emitted = plan.emitted[sent - 1] if sent else 0
        partial = replace(answer.usage, output=emitted)
        if sent < len(body_frames) or fault in ("break", "hang"):
            # A client that went away, or a simulated break: no closing bytes,
            # so the server drops the connection mid-stream.
            self._record_lost(call, answer, partial, 200)
            if fault == "hang" and sent == len(body_frames):
                await _wait_disconnect(receive)
            return
        if fault == "garbage":
            junk = _GARBAGE_FRAMES if call.protocol == "bedrock" else _GARBAGE_SSE
            self._record_lost(call, answer, partial, 200)
            await send({"type": "http.response.body", "body": junk})
            return
        self._record(call, answer.usage, 200, True)
        await send({"type": "http.response.body", "body": frames[-1]})

    # --- control --------------------------------------------------------------

    async def _control(self, method: str, path: str, raw: bytes, send: Send) -> None:
        status, payload = 200, None
        if path == "/_sim/served" and method == "GET":
            payload = self.served.as_dict()
        elif path == "/_sim/reset" and method == "POST":
            self.reset()
            payload = {"reset": True}
        elif path == "/_sim/config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    changes = json.loads(raw or b"{}")
                    if not isinstance(changes, dict):
                        raise ConfigError("the body must be a JSON object of settings")
                    self.config = self.config.updated(changes)
                except (ValueError, ConfigError) as exc:
                    status, payload = 400, {"error": str(exc)}
            if payload is None:
                payload = self.config.as_dict()
        elif path == "/_sim/health":
            payload = {"ok": True}
        else:
            status, payload = 404, {"error": f"no control route {method} {path}"}
        body = dumps(payload)
        headers = [_JSON_TYPE, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def _left_during(seconds: float, receive: Receive) -> bool:
    """Wait ``seconds`` (all of them: the generation does not stop early) and
    say whether the client disconnected meanwhile."""
    watcher = spawn(_wait_disconnect(receive))
    try:
        await asyncio.sleep(seconds)
        return watcher.done()
    finally:
        watcher.cancel()


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    while message.get("more_body"):
        message = await receive()
        parts.append(message.get("body", b""))
    return b"".join(parts)


def _bedrock_target(scope: Scope) -> tuple[str, str]:
    """(modelId, operation) from the raw path, where an ARN's slashes arrive
    percent-encoded and must be decoded after splitting."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    rest = raw.split(b"?", 1)[0][len(b"/model/") :]
    model, _, op = rest.rpartition(b"/")
    return unquote(model.decode("utf-8", "replace")), op.decode("utf-8", "replace")


def _family(model: str, body: dict[str, JSON]) -> str:
    name = model.rsplit("/", 1)[-1].lower()
    if "anthropic" in name or "claude" in name or "anthropic_version" in body:
        return "anthropic"
    if "llama" in name or isinstance(body.get("prompt"), str):
        return "llama"
    if "nova" in name or "messages" in body:
        return "nova"
    raise BadRequest(f"Malformed input request: no known body format for model {model}")


_OPENAI_KINDS = {
    400: "invalid_request_error",
    404: "invalid_request_error",
    429: "requests",
    500: "server_error",
}
_ANTHROPIC_KINDS = {
    400: "invalid_request_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
}
_BEDROCK_KINDS = {
    400: "ValidationException",
    404: "UnknownOperationException",
    429: "ThrottlingException",
    500: "InternalServerException",
}


def _error(call: Call, fault: SimFault) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status = fault.status
    if call.protocol == "openai":
        code = "rate_limit_exceeded" if status == 429 else fault.code
        body = wire_openai.error_body(fault.message, _OPENAI_KINDS[status], code, fault.param)
        headers = [_JSON_TYPE, (b"x-request-id", call.request_id.encode())]
    elif call.protocol == "anthropic":
        body = wire_anthropic.error_body(_ANTHROPIC_KINDS[status], fault.message, call.request_id)
        headers = [_JSON_TYPE, (b"request-id", call.request_id.encode())]
    else:
        kind = _BEDROCK_KINDS[status]
        body = wire_bedrock.error_body(fault.message)
        headers = [
            _JSON_TYPE,
            (b"x-amzn-requestid", call.request_id.encode()),
            *wire_bedrock.error_headers(kind),
        ]
    headers.append((b"content-length", str(len(body)).encode()))
    return status, headers, body
