"""The provider simulator: one raw ASGI app speaking the OpenAI, Anthropic and
Bedrock runtime wire formats, with deterministic usage, latency and faults,
and a record of exactly what it served (``GET /_sim/served``).

Per-request controls are headers (``x-sim-output-tokens``,
``x-sim-latency-ms``, ``x-sim-reasoning-tokens``, ``x-sim-fault``), a model
name containing ``sim-fault-<fault>``, or the run-time settings posted to
``/_sim/config`` (for clients such as boto3 that cannot easily add headers).
"""

from __future__ import annotations

import asyncio
import json
import time
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
from tokenfuse.simulator.state import FAULTS, ConfigError, Served, ServedLog, SimConfig
from tokenfuse.simulator.tokens import (
    Block,
    PromptCache,
    automatic_input,
    generated_text,
    marked_input,
    prompt_tokens,
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
}
_GARBAGE_SSE = b'data: {"id": "chatcmpl-garb\xff\xfe\n\n'
# A prelude whose CRC cannot match: any event-stream reader must reject it.
_GARBAGE_FRAMES = b"\x00\x00\x00\x20\x00\x00\x00\x00\xde\xad\xbe\xef" + b"\x00" * 20


class SimFault(Exception):
    """Raised inside a handler when the request must fail with an error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("the request body is not valid JSON") from None
            produce = handler(call, body)
            call.fault = self._fault(call)
            if call.fault in ("500", "429"):
                raise SimFault(int(call.fault), f"simulated {call.fault} fault")
            answer = produce()
        except BadRequest as exc:
            await self._refuse(call, send, SimFault(400, str(exc)))
            return
        except SimFault as exc:
            await self._refuse(call, send, exc)
            return
        latency = self._latency(call)
        if latency:
            await asyncio.sleep(latency / 1000)
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

    def _output(self, call: Call, limit: int | None) -> tuple[int, bool]:
        """Output tokens and whether the request's own limit cut them short."""
        wanted = self.config.output_tokens
        header = _header_int(call.headers, b"x-sim-output-tokens")
        if header is not None:
            wanted = min(wanted, header)
        if limit is not None and limit < wanted:
            return limit, True
        return wanted, False

    def _reply(
        self, call: Call, usage: Usage, limit: int | None, prefix: str, reasoning: bool = False
    ) -> Reply:
        output, truncated = self._output(call, limit)
        hidden = 0
        if reasoning:
            header = _header_int(call.headers, b"x-sim-reasoning-tokens")
            hidden = min(output, self.config.reasoning_tokens if header is None else header)
        usage.output = output
        return Reply(
            id=prefix + call.request_id,
            model=call.model,
            usage=usage,
            text=generated_text(output - hidden),
            reasoning=hidden,
            truncated=truncated,
            chunk_tokens=self.config.chunk_tokens,
            created=int(time.time()),
            latency_ms=self._latency(call),
        )

    # --- OpenAI ---------------------------------------------------------------

    def _chat(self, call: Call, body: JSON) -> Callable[[], Answer]:
        text = prompts.chat_text(body)
        call.model = prompts.model_of(body)
        call.stream = body.get("stream") is True
        limit = prompts.chat_limit(body)
        with_usage = prompts.include_usage(body)
        padded = prompts.include_obfuscation(body)

        def produce() -> Answer:
            usage = automatic_input("openai\0" + call.model, text, self.cache)
            reply = self._reply(call, usage, limit, "chatcmpl-", reasoning=True)
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

        def produce() -> Answer:
            usage = automatic_input("openai\0" + call.model, text, self.cache)
            reply = self._reply(call, usage, limit, "resp_", reasoning=True)
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

        def produce() -> Answer:
            usage = marked_input("anthropic\0" + call.model, blocks, self.cache)
            reply = self._reply(call, usage, limit, "msg_sim")
            if call.stream:
                call.content_type = _SSE_TYPE
                return Answer(usage, plan=wire_anthropic.message_stream(reply))
            return Answer(usage, body=wire_anthropic.message_body(reply))

        return produce

    def _count_tokens(self, call: Call, body: JSON) -> Callable[[], Answer]:
        blocks = prompts.anthropic_blocks(body, need_max_tokens=False)
        call.model = prompts.model_of(body)
        total = prompt_tokens(sum(len(b.text) for b in blocks))
        # Counting is free: nothing is billed and the cache is not touched.
        return lambda: Answer(Usage(), body=dumps({"input_tokens": total}))

    # --- Bedrock --------------------------------------------------------------

    def _bedrock(self, call: Call, body: JSON) -> Callable[[], Answer]:
        op = call.route
        call.stream = _BEDROCK_OPS[op]
        if not isinstance(body, dict):
            raise BadRequest("Malformed input request: the body must be a JSON object")
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
            usage = marked_input("bedrock\0" + call.model, blocks, self.cache)
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

    def _record(self, call: Call, usage: Usage, status: int, complete: bool) -> None:
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

    async def _send_body(self, call: Call, answer: Answer, receive: Receive, send: Send) -> None:
        body = answer.body
        headers = [call.content_type, self._id_header(call), *answer.headers]
        inputs = replace(answer.usage, output=0)
        if call.fault == "hang":
            self._record(call, inputs, 0, False)
            await _wait_disconnect(receive)
            return
        if call.fault == "garbage":
            body = body[: len(body) // 2] + b"\xff\xfe<garbage>"
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if call.fault == "break":
            # Fewer bytes than Content-Length, then the server drops the connection.
            self._record(call, inputs, 200, False)
            await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
            return
        # Recorded before the last byte leaves, so a client that has its answer
        # always finds it in the record.
        garbage = call.fault == "garbage"
        self._record(call, inputs if garbage else answer.usage, 200, not garbage)
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
        watcher = spawn(_wait_disconnect(receive)) if delay else None
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
            self._record(call, partial, 200, False)
            if fault == "hang" and sent == len(body_frames):
                await _wait_disconnect(receive)
            return
        if fault == "garbage":
            junk = _GARBAGE_FRAMES if call.protocol == "bedrock" else _GARBAGE_SSE
            self._record(call, partial, 200, False)
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
        code = "rate_limit_exceeded" if status == 429 else None
        body = wire_openai.error_body(fault.message, _OPENAI_KINDS[status], code)
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
