"""Inbound paths -> (protocol, route, model from path, upstream path). Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Route:
    protocol: str
    route: str
    upstream_path: str  # appended to the upstream's base_url
    model_from_path: str | None = None  # still percent-encoded; the protocol module decodes it
    bedrock_action: str | None = None


_STATIC: dict[str, Route] = {
    "/v1/chat/completions": Route("openai", "chat.completions", "/chat/completions"),
    "/v1/responses": Route("openai", "responses", "/responses"),
    "/v1/embeddings": Route("openai", "embeddings", "/embeddings"),
    "/v1/messages": Route("anthropic", "messages", "/v1/messages"),
    "/v1/messages/count_tokens": Route("anthropic", "count_tokens", "/v1/messages/count_tokens"),
}
_BEDROCK_ACTIONS = {
    "converse": "converse",
    "converse-stream": "converse_stream",
    "invoke": "invoke",
    "invoke-with-response-stream": "invoke_stream",
    "count-tokens": "count_tokens",  # free: recorded at $0 like Anthropic's count_tokens
}


def match(raw_path: str) -> Route | None:
    """Match the still percent-encoded path (Bedrock model ids may hold '/')."""
    path = raw_path.split("?", 1)[0]
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    static = _STATIC.get(path)
    if static is not None:
        return static
    if path.startswith("/model/"):
        rest = path[len("/model/") :]
        model_enc, sep, action = rest.rpartition("/")
        route = _BEDROCK_ACTIONS.get(action)
        if sep and model_enc and route is not None:
            return Route("bedrock", route, "", model_from_path=model_enc, bedrock_action=action)
    return None


def guess_protocol(raw_path: str, headers: dict[str, str]) -> str:
    """For a path no route matches: answer in the format the caller most likely speaks."""
    if raw_path.startswith("/model/") or "x-amz-date" in headers:
        return "bedrock"
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic"
    return "openai"
