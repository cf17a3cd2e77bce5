"""What every protocol module shares: the request summary, the input error,
the stream meter's contract and a few small helpers over JSON bytes.

The gateway never looks inside a body itself; it asks the protocol module of
the route for a `RequestInfo`, and for the usage of a response or stream.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenfuse.usage import Usage

# Per-media bounds on input tokens, added to `prompt_bytes` (see docs/protocols.md).
# A byte of JSON is at least a token's worth of budget for text, but a small
# compressed image or PDF can cost far more tokens than it has bytes.
IMAGE_TOKEN_BOUND = 10_000
DOCUMENT_TOKEN_BOUND = 250_000


@dataclass(slots=True)
class RequestInfo:
    protocol: str
    route: str
    model: str
    stream: bool
    max_tokens: int | None
    prompt_bytes: int
    cache_writes_possible: bool
    cache_1h: bool
    body: dict[str, Any] = field(repr=False)
    wants_usage_chunk: bool = True


class ProtocolError(Exception):
    """Bad client input, to be answered with `status` in the protocol's format."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


class StreamMeterLike(Protocol):
    """What the gateway drives: each protocol module's `StreamMeter`."""

    text_bytes: int

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def usage(self, complete: bool) -> Usage: ...


def load_object(body: bytes, error_type: str) -> dict[str, Any]:
    """Decode a request body that must be a UTF-8 JSON object."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            400,
            error_type,
            f"The request body is not valid UTF-8 (bad byte at offset {exc.start}). "
            "Send the JSON body encoded as UTF-8.",
        ) from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            400,
            error_type,
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}. "
            "Send a single JSON object.",
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            400,
            error_type,
            f"The request body must be a JSON object, got a JSON {_json_kind(obj)}. "
            'Send an object such as {"model": ..., ...}.',
        )
    return obj


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def require_model(body: dict[str, Any], error_type: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        got = "is missing" if model is None else f"must be a non-empty string, got {_json_kind(model)}"
        raise ProtocolError(400, error_type, f'Field \'model\' {got}. Name the model, e.g. "model": "...".')
    return model


def opt_int(obj: Mapping[str, Any], key: str, error_type: str, where: str = "") -> int | None:
    """An optional non-negative integer field (JSON null counts as absent)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(
            400,
            error_type,
            f"Field '{where}{key}' must be a non-negative integer, got {_json_kind(value)} {value!r:.40}. "
            f'Send a whole number such as "{key}": 1024.',
        )
    return value


def opt_bool(obj: Mapping[str, Any], key: str, error_type: str) -> bool:
    value = obj.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ProtocolError(
            400,
            error_type,
            f"Field '{key}' must be true or false, got {_json_kind(value)} {value!r:.40}. "
            f'Send "{key}": true or leave it out.',
        )
    return value


def require_list(obj: Mapping[str, Any], key: str, error_type: str, *, optional: bool = False) -> None:
    value = obj.get(key)
    if value is None and optional:
        return
    if not isinstance(value, list):
        got = "is missing" if value is None else f"must be an array, got {_json_kind(value)}"
        raise ProtocolError(400, error_type, f"Field '{key}' {got}. Send \"{key}\": [...].")


def sub_object(obj: Mapping[str, Any], key: str, error_type: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(
            400,
            error_type,
            f"Field '{key}' must be an object, got {_json_kind(value)}. Send \"{key}\": {{...}}.",
        )
    return value


# Quotes inside JSON strings are escaped, so an unescaped `"type"` key can only
# be a real key: a regex over the raw body counts media blocks without a walk.
_IMAGE_RE = re.compile(rb'"type"\s*:\s*"(?:image|image_url|input_image)"|"image"\s*:\s*\{')
_DOCUMENT_RE = re.compile(
    rb'"type"\s*:\s*"(?:document|file|input_file|input_audio|container_upload)"|"(?:document|video|audio)"\s*:\s*\{'
)


def prompt_bound(body: bytes) -> int:
    """Upper bound on input tokens, in bytes-as-tokens (see docs/protocols.md)."""
    extra = 0
    if b"image" in body:
        extra += IMAGE_TOKEN_BOUND * len(_IMAGE_RE.findall(body))
    if b"document" in body or b"file" in body or b"audio" in body or b"video" in body or b"container" in body:
        extra += DOCUMENT_TOKEN_BOUND * len(_DOCUMENT_RE.findall(body))
    return len(body) + extra


_TTL_1H_RE = re.compile(rb'"ttl"\s*:\s*"1h"')


def asks_ttl_1h(body: bytes) -> bool:
    return b"1h" in body and _TTL_1H_RE.search(body) is not None


def compact_json(obj: Any) -> bytes:
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (valid as a JSON \u escape) has no UTF-8 form; keep it escaped.
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def as_int(value: object) -> int:
    """A usage figure as an int; anything else (null, absent, junk) counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, float) and value.is_integer():
        return max(int(value), 0)
    return 0


def loads_object(data: bytes) -> dict[str, Any] | None:
    """Parse a response body or event payload; None unless it is a JSON object."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


_KEY_PATTERNS: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}


def string_values_bytes(data: bytes, keys: tuple[bytes, ...]) -> int:
    """UTF-8 bytes of the string values of `keys` anywhere in a JSON text.

    Finds `"key":"...` by scanning, not by parsing: it runs on every streamed
    event. Only literals containing an escape are decoded.
    """
    pattern = _KEY_PATTERNS.get(keys)
    if pattern is None:
        alternatives = b"|".join(re.escape(k) for k in keys)
        pattern = _KEY_PATTERNS[keys] = re.compile(b'"(?:' + alternatives + rb')"\s*:\s*"')
    total = 0
    pos = 0
    while True:
        m = pattern.search(data, pos)
        if m is None:
            return total
        end = _string_end(data, m.end())
        if end < 0:
            return total
        total += _literal_bytes(data[m.end() : end])
        pos = end + 1


def _string_end(data: bytes, start: int) -> int:
    """Index of the closing quote of a JSON string whose body starts at `start`."""
    k = data.find(b'"', start)
    while k >= 0:
        backslashes = 0
        m = k - 1
        while m >= start and data[m] == 92:  # '\\'
            backslashes += 1
            m -= 1
        if backslashes % 2 == 0:
            return k
        k = data.find(b'"', k + 1)
    return -1


def _literal_bytes(literal: bytes) -> int:
    if b"\\" not in literal:
        return len(literal)
    try:
        text = json.loads(b'"' + literal + b'"')
    except ValueError:
        return len(literal)
    return len(str(text).encode("utf-8", "surrogatepass"))
