"""What the simulator bills from a request body: its prompt text, cache markers
and output limit, read independently of the gateway's own protocol parsers.

"Text content" is the text a user wrote: message contents and text parts,
system prompts and instructions, tool results, tool-call inputs and tool
definitions (as compact sorted JSON). Role names and other fields are free.
"""

from __future__ import annotations

import json
from typing import Any

from tokenfuse.simulator.tokens import TTL_1H, TTL_5M, Block, prompt_tokens

JSON = Any


class BadRequest(ValueError):
    """The body is not a request this route accepts; the message says why.
    ``param`` and ``code`` fill the OpenAI error's fields of the same names."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _first_wins(pairs: list[tuple[str, JSON]]) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    for key, value in pairs:
        out.setdefault(key, value)
    return out


def parse_body(raw: bytes, duplicates: str = "last") -> JSON:
    """The request JSON. ``duplicates="first"`` keeps the first of a repeated
    key, as some parsers do, where Python (and "last") keeps the last."""
    try:
        if duplicates == "first":
            return json.loads(raw, object_pairs_hook=_first_wins)
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None


def _dump(value: JSON) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _texts(content: JSON) -> list[str]:
    """Text strings inside a content value, in order (strings, parts, nested results)."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    out.append(part["text"])
                elif "content" in part:  # Anthropic tool_result
                    out.extend(_texts(part["content"]))
                elif isinstance(part.get("output"), str):  # Responses function_call_output
                    out.append(part["output"])
                elif "input" in part and part.get("type") == "tool_use":
                    out.append(_dump(part["input"]).decode())
    return out


def _require_dict(body: JSON) -> dict[str, JSON]:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _messages(body: dict[str, JSON]) -> list[JSON]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("messages: field required (a list)")
    return messages


def model_of(body: dict[str, JSON]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: field required")
    return model


def _positive_int(value: JSON, field: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{field}: must be a positive integer")
    return value


# --- OpenAI ----------------------------------------------------------------


def chat_text(body: JSON) -> bytes:
    body = _require_dict(body)
    parts: list[str] = []
    for message in _messages(body):
        if isinstance(message, dict):
            parts.extend(_texts(message.get("content")))
    return "".join(parts).encode()


def chat_limit(body: dict[str, JSON]) -> int | None:
    limit = _positive_int(body.get("max_completion_tokens"), "max_completion_tokens")
    return limit if limit is not None else _positive_int(body.get("max_tokens"), "max_tokens")


# The API's own ceiling on `n`.
MAX_CHOICES = 128


def chat_choices(body: dict[str, JSON]) -> int:
    """How many choices a Chat request asks for (`n`, default 1)."""
    value = body.get("n")
    if value is None:
        return 1
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_CHOICES:
        raise BadRequest(f"n: must be an integer from 1 to {MAX_CHOICES}", param="n")
    return value


def include_usage(body: dict[str, JSON]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def include_obfuscation(body: dict[str, JSON]) -> bool:
    """On unless the request turns it off (Chat and Responses alike)."""
    options = body.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_obfuscation") is False)


def responses_text(body: JSON) -> bytes:
    body = _require_dict(body)
    parts: list[str] = []
    if isinstance(body.get("instructions"), str):
        parts.append(body["instructions"])
    items = body.get("input")
    if isinstance(items, str):
        parts.append(items)
    elif isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                if "content" in item:
                    parts.extend(_texts(item["content"]))
                elif isinstance(item.get("output"), str):
                    parts.append(item["output"])
                elif isinstance(item.get("arguments"), str):
                    parts.append(item["arguments"])
    else:
        raise BadRequest("input: field required (a string or a list of items)")
    return "".join(parts).encode()


def previous_response(body: dict[str, JSON]) -> str | None:
    value = body.get("previous_response_id")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest("previous_response_id: must be a string", param="previous_response_id")
    return value


def responses_server_tools(body: dict[str, JSON]) -> dict[str, int]:
    """Server-side tools a Responses request enables, as Anthropic-style
    counters: every ``web_search*`` tool is one web search."""
    searches = sum(
        1
        for tool in body.get("tools") or []
        if isinstance(tool, dict) and str(tool.get("type", "")).startswith("web_search")
    )
    return {"web_search_requests": searches} if searches else {}


def responses_limit(body: dict[str, JSON]) -> int | None:
    return _positive_int(body.get("max_output_tokens"), "max_output_tokens")


def embedding_inputs(body: JSON) -> list[int]:
    """Tokens of each input (a string is counted by bytes, a token array by length)."""
    body = _require_dict(body)
    value = body.get("input")
    if isinstance(value, str):
        return [prompt_tokens(len(value.encode()))]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return [len(value)]
        out: list[int] = []
        for item in value:
            if isinstance(item, str):
                out.append(prompt_tokens(len(item.encode())))
            elif isinstance(item, list) and all(isinstance(v, int) for v in item):
                out.append(len(item))
            else:
                raise BadRequest("input: each item must be a string or a list of token ids")
        return out
    raise BadRequest("input: field required (a string, a list of strings or token arrays)")


# --- Anthropic -------------------------------------------------------------


def _anthropic_marker(block: JSON) -> float | None:
    if not isinstance(block, dict):
        return None
    control = block.get("cache_control")
    if not isinstance(control, dict):
        return None
    return TTL_1H if control.get("ttl") == "1h" else TTL_5M


def anthropic_blocks(body: JSON, *, need_max_tokens: bool = True) -> list[Block]:
    """Prompt blocks in cache order: tools, system, messages."""
    body = _require_dict(body)
    messages = _messages(body)
    if need_max_tokens:
        anthropic_limit(body)
    blocks: list[Block] = []
    tools = body.get("tools")
    if isinstance(tools, list):
        for tool in tools:
            if isinstance(tool, dict):
                bare = {k: v for k, v in tool.items() if k != "cache_control"}
                blocks.append(Block(_dump(bare), _anthropic_marker(tool)))
    system = body.get("system")
    if isinstance(system, str):
        blocks.append(Block(system.encode()))
    elif isinstance(system, list):
        for part in system:
            blocks.append(Block("".join(_texts([part])).encode(), _anthropic_marker(part)))
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("messages: each message must be an object")
        content = message.get("content")
        if isinstance(content, str):
            blocks.append(Block(content.encode()))
        elif isinstance(content, list):
            for part in content:
                blocks.append(Block("".join(_texts([part])).encode(), _anthropic_marker(part)))
        else:
            raise BadRequest("messages.content: must be a string or a list of content blocks")
    return blocks


def anthropic_server_tools(body: dict[str, JSON]) -> dict[str, int]:
    """Server tools an Anthropic request enables (``web_search_*``,
    ``web_fetch_*``), each counted as one use, in the usage block's names."""
    searches = fetches = 0
    for tool in body.get("tools") or []:
        kind = str(tool.get("type", "")) if isinstance(tool, dict) else ""
        searches += kind.startswith("web_search_")
        fetches += kind.startswith("web_fetch_")
    if not searches and not fetches:
        return {}
    return {"web_search_requests": searches, "web_fetch_requests": fetches}


def anthropic_limit(body: dict[str, JSON]) -> int:
    limit = _positive_int(body.get("max_tokens"), "max_tokens")
    if limit is None:
        raise BadRequest("max_tokens: Field required")
    return limit


# --- caching rules ----------------------------------------------------------

# Minimum cacheable prefix in tokens, from Anthropic's prompt-caching page and
# Bedrock's model table; the first matching fragment of the model id wins.
_CACHE_MINIMUMS: tuple[tuple[str, int], ...] = (
    ("opus-4-6", 4096), ("opus-4-5", 4096), ("haiku-4-5", 4096),
    ("haiku", 2048),  # Claude 3 and 3.5 Haiku
    ("claude", 1024),  # Sonnet 3.7 / 4 / 4.5 / 4.6, Opus 4 / 4.1
    ("nova", 1024),
)


def cache_minimum(model: str) -> int | None:
    """The model's minimum cacheable prefix, or None for a model without prompt caching."""
    name = model.lower().replace(".", "-")
    for fragment, tokens in _CACHE_MINIMUMS:
        if fragment in name:
            return tokens
    return None


# --- Bedrock ---------------------------------------------------------------


def _cache_point(block: JSON) -> float | None:
    point = block.get("cachePoint") if isinstance(block, dict) else None
    if not isinstance(point, dict):
        return None
    return TTL_1H if point.get("ttl") == "1h" else TTL_5M


def _converse_content(block: JSON) -> str:
    if not isinstance(block, dict):
        return ""
    if isinstance(block.get("text"), str):
        return str(block["text"])
    if isinstance(block.get("toolUse"), dict):
        return _dump(block["toolUse"].get("input")).decode()
    if isinstance(block.get("toolResult"), dict):
        parts = []
        for item in block["toolResult"].get("content") or []:
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif isinstance(item, dict) and "json" in item:
                parts.append(_dump(item["json"]).decode())
        return "".join(parts)
    if isinstance(block.get("toolSpec"), dict):
        return _dump(block["toolSpec"]).decode()
    return ""


def _append_converse(blocks: list[Block], items: JSON) -> None:
    if not isinstance(items, list):
        return
    for item in items:
        marker = _cache_point(item)
        if marker is not None:
            # A cachePoint is its own element and marks everything before it.
            last = blocks.pop() if blocks else Block(b"")
            blocks.append(Block(last.text, marker))
        else:
            blocks.append(Block(_converse_content(item).encode()))


def converse_blocks(body: JSON) -> list[Block]:
    """Converse (and Nova invoke) prompt blocks in cache order: tools, system, messages."""
    body = _require_dict(body)
    messages = _messages(body)
    blocks: list[Block] = []
    tool_config = body.get("toolConfig")
    if isinstance(tool_config, dict):
        _append_converse(blocks, tool_config.get("tools"))
    _append_converse(blocks, body.get("system"))
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), list):
            raise BadRequest("messages: each message needs a content list")
        _append_converse(blocks, message["content"])
    return blocks


def converse_limit(body: dict[str, JSON]) -> int | None:
    config = body.get("inferenceConfig")
    if not isinstance(config, dict):
        return None
    limit = _positive_int(config.get("maxTokens"), "inferenceConfig.maxTokens")
    if limit is None:  # Nova's invoke body spelling
        limit = _positive_int(config.get("max_new_tokens"), "inferenceConfig.max_new_tokens")
    return limit


def llama_text(body: JSON) -> bytes:
    body = _require_dict(body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt: field required (a string)")
    return prompt.encode()


def llama_limit(body: dict[str, JSON]) -> int | None:
    return _positive_int(body.get("max_gen_len"), "max_gen_len")
