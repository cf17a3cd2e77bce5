"""What every protocol module shares: the request summary, the input error,
the stream meter's contract and a few small helpers over JSON bytes.

The gateway never looks inside a body itself; it asks the protocol module of
the route for a `RequestInfo`, and for the usage of a response or stream.
Every decision is taken on the parsed body (escapes decoded, repeated keys
refused) and the bytes forwarded are that body re-encoded (`encode_body`), so
what is checked is what is sent.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any, Protocol

from tokenfuse.usage import Usage

try:
    import orjson
except ImportError:  # pragma: no cover - a declared dependency; the stdlib encoder is the fallback
    orjson = None  # type: ignore[assignment]

# Per-media bounds on input tokens, added to `prompt_bytes` (see docs/protocols.md).
# A byte of JSON is at least a token's worth of budget for text, but a small
# compressed image or PDF can cost far more tokens than it has bytes.
IMAGE_TOKEN_BOUND = 10_000
DOCUMENT_TOKEN_BOUND = 250_000

# Limits on what a request body may be made of (docs/protocols.md, "Parsing").
# Real request bodies nest about 10 deep (a tool schema adds two levels per
# nested object); 64 leaves room and keeps every later walk shallow.
MAX_JSON_DEPTH = 64
# No field of any protocol needs a longer number; longer literals only attack
# the parser (int() is quadratic, and refuses over 4,300 digits with ValueError).
MAX_INT_DIGITS = 30
MAX_FLOAT_CHARS = 64
# Most completions one request may ask for (OpenAI's own limit on `n`).
MAX_CHOICES = 128


class Canonical:
    """The canonical encoding of a request body (compact UTF-8 JSON), kept per
    top-level member so that changing one member (`max_tokens`,
    `stream_options`) re-encodes that member only, not a 100 kB prompt.

    Members are written by :func:`dumps` (orjson; 20-30x faster than the stdlib
    on a long prompt). A body orjson cannot write (an integer beyond 64 bits) is
    written by the stdlib throughout, so that the whole body is always spelled
    by one encoder: the forwarded bytes equal ``dumps(body)``."""

    __slots__ = ("_joined", "_member", "_members")

    def __init__(self, body: Mapping[str, Any]) -> None:
        self._encode_all(body)

    def _encode_all(self, body: Mapping[str, Any]) -> None:
        self._member: Callable[[str, Any], bytes] = _fast_member
        try:
            self._members = {k: _fast_member(k, v) for k, v in body.items()}
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            self._member = _std_member
            self._members = {k: _std_member(k, v) for k, v in body.items()}
        self._joined: bytes | None = None

    def changed(self, body: Mapping[str, Any], *keys: str) -> None:
        """Re-encode the top-level `keys` of `body` after a change to them."""
        for k in keys:
            if k in body:
                try:
                    self._members[k] = self._member(k, body[k])
                except TypeError:  # the change holds what orjson cannot write
                    self._encode_all(body)
                    return
            else:
                self._members.pop(k, None)
        self._joined = None

    @property
    def members(self) -> Mapping[str, bytes]:
        """Each top-level member's encoding (``"key":value``), for reading only."""
        return self._members

    def encode(self) -> bytes:
        joined = self._joined
        if joined is None:
            joined = self._joined = b"{" + b",".join(self._members.values()) + b"}"
        return joined


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_SORTED_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, sort_keys=True)
_ORJSON_SORT = orjson.OPT_SORT_KEYS if orjson is not None else 0


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON of a decoded JSON value: the canonical encoding of
    forwarded bodies (:class:`Canonical`) and of the digests the gateway keeps
    (conversation keys, cache fingerprints). The same value always gives the
    same bytes; floats are spelled as orjson spells them (``0.00001``, ``1e16``),
    the shortest form that reads back as the same number, not as ``json.dumps``
    spells them.

    orjson writes it 5-7x faster than the stdlib encoder, which made encoding
    the largest cost of a long conversation (docs/benchmarks.md). What orjson
    refuses (an integer beyond 64 bits, a lone surrogate) goes to the stdlib,
    which encodes the first and raises UnicodeEncodeError on the second."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_ORJSON_SORT if sort_keys else 0)
        except TypeError:  # orjson.JSONEncodeError is a TypeError
            pass
    return (_SORTED_ENCODER if sort_keys else _ENCODER).encode(value).encode("utf-8")


# The stdlib's C encoder, made once: JSONEncoder.encode builds a new one on every
# call, which costs more than encoding a small member. No circular check (a
# decoded body has no cycles) and no `default` (it holds only JSON types).
_C_ENCODE = c_make_encoder(None, None, c_encode_basestring, None, ":", ",", False, False, True)


def _fast_member(key: str, value: Any) -> bytes:
    if orjson is None:
        return _std_member(key, value)
    # Raises TypeError for what orjson cannot write, a lone surrogate included.
    return orjson.dumps({key: value})[1:-1]


def _std_member(key: str, value: Any) -> bytes:
    # Strict UTF-8: a lone surrogate raises UnicodeEncodeError (parse_body refuses it).
    text: str = c_encode_basestring(key) + ":" + "".join(_C_ENCODE(value, 0))
    return text.encode("utf-8")


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
    # Completions generated (and billed) per request: OpenAI `n`, `best_of`, ...
    choices: int = 1
    # Features the provider can bill that the body does not bound, one reason each.
    unbounded: tuple[str, ...] = ()
    # Options billed at rates the gateway does not price, one reason each.
    priced_options: tuple[str, ...] = ()
    # The encoding of `body` that `encode_body` returns. Protocol functions that
    # change `body` update it; anything else that changes `body` must set it to None.
    canonical: Canonical | None = field(default=None, repr=False, compare=False)


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
    # Events that carried generated text: each holds at least one output token, so
    # this is a lower bound of the output so far (the gateway cuts an overrunning stream on it).
    text_events: int

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def usage(self, complete: bool) -> Usage: ...


@dataclass(frozen=True, slots=True)
class Parsed:
    """A request body decoded once, with what the bounds need from it."""

    obj: dict[str, Any]
    canonical: Canonical
    images: int
    documents: int
    cache_marker: bool  # an Anthropic `cache_control` or Bedrock `cachePoint` object
    ttl_1h: bool  # some `"ttl": "1h"`

    @property
    def prompt_bytes(self) -> int:
        """Upper bound on input tokens, in bytes-as-tokens (see docs/protocols.md)."""
        return (
            len(self.canonical.encode())
            + IMAGE_TOKEN_BOUND * self.images
            + DOCUMENT_TOKEN_BOUND * self.documents
        )


class _Refused(Exception):
    """Raised from inside the JSON decoder's hooks; becomes a ProtocolError."""

    def __init__(self, what: str, fix: str) -> None:
        self.what = what
        self.fix = fix


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers keep different copies of a repeated key; refusing it means the
    # upstream cannot act on another model, limit or tool than the one checked.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(
                    f"repeats the key {key[:80]!r} in one object", "Send each key once per object."
                )
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise _Refused(f"contains {name}, which is not JSON", "Send finite numbers only.")


def _parse_int(literal: str) -> int:
    if len(literal) > MAX_INT_DIGITS and len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"contains an integer with more than {MAX_INT_DIGITS} digits", _NUMBER_FIX)
    return int(literal)


def _parse_float(literal: str) -> float:
    value = float(literal) if len(literal) <= MAX_FLOAT_CHARS else math.inf
    if not math.isfinite(value):
        raise _Refused(
            f"contains a number out of range or longer than {MAX_FLOAT_CHARS} characters", _NUMBER_FIX
        )
    return value


_NUMBER_FIX = "Send numbers of ordinary size."
_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_pairs,
    parse_constant=_no_constant,
    parse_int=_parse_int,
    parse_float=_parse_float,
)


def parse_body(body: bytes, error_type: str) -> Parsed:
    """Decode a request body that must be a UTF-8 JSON object, and measure it.

    Raises only ProtocolError(400): bad UTF-8, bad JSON, a repeated key at any
    depth, nesting deeper than MAX_JSON_DEPTH, NaN/Infinity, an integer of more
    than MAX_INT_DIGITS digits, a float out of range, an unpaired surrogate, a
    body that is not an object."""
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
        obj = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(
            400,
            error_type,
            f"The request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}. "
            "Send a single JSON object.",
        ) from None
    except _Refused as exc:
        raise ProtocolError(400, error_type, f"The request body {exc.what}. {exc.fix}") from None
    except RecursionError:
        raise _too_deep(error_type) from None
    if not isinstance(obj, dict):
        raise ProtocolError(
            400,
            error_type,
            f"The request body must be a JSON object, got a JSON {_json_kind(obj)}. "
            'Send an object such as {"model": ..., ...}.',
        )
    images, documents, cache, ttl_1h = _scan(obj, error_type)
    try:
        canonical = Canonical(obj)
    except UnicodeEncodeError:
        raise ProtocolError(
            400,
            error_type,
            "The request body contains an unpaired surrogate escape (such as \\ud800), which is not "
            "Unicode text and cannot be forwarded as UTF-8. Send valid Unicode text.",
        ) from None
    return Parsed(obj, canonical, images, documents, cache, ttl_1h)


def load_object(body: bytes, error_type: str) -> dict[str, Any]:
    """Decode a request body that must be a UTF-8 JSON object (see parse_body)."""
    return parse_body(body, error_type).obj


def _too_deep(error_type: str) -> ProtocolError:
    return ProtocolError(
        400,
        error_type,
        f"The request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep. "
        "Flatten the JSON you send.",
    )


# Media blocks by their `type` (OpenAI, Anthropic) ...
_IMAGE_TYPES = frozenset({"image", "image_url", "input_image"})
_DOCUMENT_TYPES = frozenset(
    {"document", "file", "input_file", "input_audio", "audio", "video", "input_video", "container_upload"}
)
# ... or by their key (Bedrock Converse and Nova: {"image": {...}}).
_IMAGE_KEYS = frozenset({"image"})
_DOCUMENT_KEYS = frozenset({"document", "video", "audio"})
_CACHE_KEYS = frozenset({"cache_control", "cachePoint"})
# Values that are schemas or free-form tool data, never content blocks: a
# property named "image" in a tool schema is not an image. `input` only when it
# is an object (a tool call's arguments); as an array it is a Responses input.
# `source` is the inside of a media block, already counted.
_OPAQUE_KEYS = frozenset({"input_schema", "parameters", "schema", "json", "source"})
# Keys whose dict holding them takes the slow path of the walk.
_SPECIAL_KEYS = _IMAGE_KEYS | _DOCUMENT_KEYS | _CACHE_KEYS | _OPAQUE_KEYS | {"input"}


def _scan(obj: dict[str, Any], error_type: str) -> tuple[int, int, bool, bool]:
    """One iterative walk over the containers: (images, documents, cache marker,
    1h ttl), refusing nesting deeper than MAX_JSON_DEPTH.

    Cache markers and TTLs count everywhere (a false positive only raises the
    bound); media blocks do not count inside schemas and tool data."""
    images = documents = 0
    cache = ttl_1h = False
    # (container, depth, whether content blocks inside it count as media)
    stack: list[tuple[Any, int, bool]] = [(obj, 1, True)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth, counted = pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep(error_type)
        if node.__class__ is list:
            for value in node:
                cls = value.__class__
                if cls is dict or cls is list:
                    push((value, depth + 1, counted))
            continue
        if counted:
            kind = node.get("type")
            if kind.__class__ is str:
                if kind in _IMAGE_TYPES:
                    images += 1
                elif kind in _DOCUMENT_TYPES:
                    documents += 1
        if not ttl_1h and node.get("ttl") == "1h":
            ttl_1h = True
        if _SPECIAL_KEYS.isdisjoint(node):
            # The common case, kept tight: no key needs a look, only children to visit.
            for value in node.values():
                cls = value.__class__
                if cls is dict or cls is list:
                    push((value, depth + 1, counted))
            continue
        for key, value in node.items():
            cls = value.__class__
            if cls is dict:
                if key in _CACHE_KEYS:
                    cache = True
                elif counted and key in _IMAGE_KEYS:
                    images += 1
                elif counted and key in _DOCUMENT_KEYS:
                    documents += 1
                push((value, depth + 1, counted and key not in _OPAQUE_KEYS and key != "input"))
            elif cls is list:
                push((value, depth + 1, counted and key not in _OPAQUE_KEYS))
    return images, documents, cache, ttl_1h


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


def opt_limit(obj: Mapping[str, Any], key: str, error_type: str, where: str = "") -> int | None:
    """An optional output limit: a positive integer (JSON null counts as absent).

    0 is refused, not read as "no output": every provider refuses it too, and
    a bound of zero output tokens would let the request through for free."""
    value = opt_int(obj, key, error_type, where)
    if value == 0:
        raise ProtocolError(
            400,
            error_type,
            f"Field '{where}{key}' must be at least 1, got 0. Send the most output tokens you want, "
            f'such as "{key}": 1024, or leave it out for the gateway\'s default.',
        )
    return value


def opt_choices(obj: Mapping[str, Any], key: str, error_type: str, where: str = "") -> int:
    """How many completions a multiple-choice field (`n`, `best_of`, ...) asks for; 1 when absent."""
    value = opt_int(obj, key, error_type, where)
    if value is None:
        return 1
    if not 1 <= value <= MAX_CHOICES:
        raise ProtocolError(
            400,
            error_type,
            f"Field '{where}{key}' must be between 1 and {MAX_CHOICES}, got {value}. "
            f"Ask for fewer completions per request.",
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


def encoded_body(info: RequestInfo) -> bytes:
    """The bytes to forward: `info.body` in its canonical encoding."""
    canonical = info.canonical
    if canonical is None:
        try:
            canonical = info.canonical = Canonical(info.body)
        except UnicodeEncodeError:
            return compact_json(info.body)
    return canonical.encode()


def body_changed(info: RequestInfo, *keys: str) -> None:
    """Record that the top-level `keys` of `info.body` were changed."""
    if info.canonical is not None:
        info.canonical.changed(info.body, *keys)


def off_list(value: object, allowed: frozenset[str]) -> bool:
    """True when a client value is present and not one of `allowed` (any non-string included)."""
    return value is not None and not (isinstance(value, str) and value in allowed)


def describe(value: object) -> str:
    """A short, safe rendering of a client value for a refusal reason."""
    return f"{value!r:.60}"


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


_LONG_DIGITS = re.compile(rb"[0-9]{20}")


def loads_object(data: bytes) -> dict[str, Any] | None:
    """Parse a response body or event payload; None unless it is a JSON object."""
    if orjson is not None and _LONG_DIGITS.search(data) is None:
        # Every response and usage-bearing event goes through here. What orjson
        # refuses (NaN, a BOM, UTF-16) the stdlib decides, as before; so does a
        # body with 20+ digits in a row, which orjson would read as a float if a number.
        try:
            fast = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            return fast if isinstance(fast, dict) else None
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return obj if isinstance(obj, dict) else None


_KEY_PATTERNS: dict[tuple[bytes, ...], re.Pattern[bytes]] = {}


def text_keys(keys: tuple[bytes, ...]) -> re.Pattern[bytes]:
    """What a TextScanner searches for: `"key":"` for one of `keys`, then the
    string's body up to its first quote or backslash as group 1."""
    pattern = _KEY_PATTERNS.get(keys)
    if pattern is None:
        alternatives = b"|".join(re.escape(k) for k in keys)
        pattern = _KEY_PATTERNS[keys] = re.compile(b'"(?:' + alternatives + rb')"\s*:\s*"([^"\\]*+)')
    return pattern


def string_values_bytes(data: bytes, keys: tuple[bytes, ...], start: int = 0, end: int | None = None) -> int:
    """UTF-8 bytes of the string values of `keys` anywhere in the JSON text
    ``data[start:end]`` (read in place: no copy of the slice).

    Finds `"key":"...` by scanning, not by parsing: it runs on every streamed
    event. Only literals containing an escape are decoded. Counting stops at a
    string with no closing quote."""
    return TextScanner(text_keys(keys)).count(data, start, len(data) if end is None else end)


class TextScanner:
    """`string_values_bytes` over the events of one stream.

    A stream's text events mostly begin alike, up to their text: OpenAI chat
    chunks repeat id, model and fingerprint up to `"delta":{"content":"`,
    Anthropic deltas `{"type":"content_block_delta","index":0,"delta":{"type":
    "text_delta","text":"`. The scanner remembers the last event's bytes up to
    its first string value; an event that begins with the same bytes has its
    first value at the same place (whether the search matches at a position
    before it depends on no byte past that value's opening quote), so it is read
    from there instead of searched for.

    With `absent`, `clean` tells the caller, after each `count`, where in the
    event a search for `absent` may start: no occurrence begins before it.
    Without `remember`, nothing is remembered, for streams whose events differ
    early (Responses events number themselves)."""

    __slots__ = ("_absent", "_prefix", "_prefix_clean", "_remember", "_search", "clean")

    def __init__(self, keys: re.Pattern[bytes], absent: bytes = b"", *, remember: bool = True) -> None:
        self._search = keys.search
        self._absent = absent
        self._remember = remember
        self._prefix = b""
        # Where a search for `absent` may start, relative to the remembered
        # prefix; -1 until an event begins with it (many are never reused).
        self._prefix_clean = 0
        self.clean = 0

    def count(self, data: bytes, start: int, end: int) -> int:
        """UTF-8 bytes of the values in ``data[start:end]``."""
        prefix = self._prefix
        if prefix and data.startswith(prefix, start, end):
            s = start + len(prefix)
            clean = self._prefix_clean
            if clean < 0:  # the first event to begin with this prefix
                absent = self._absent
                # An occurrence of `absent` may begin in the prefix and end past it.
                clean = self._prefix_clean = (
                    0 if not absent or absent in prefix else max(len(prefix) - len(absent) + 1, 0)
                )
            self.clean = start + clean
            e = data.find(b'"', s, end)
            if e < 0:
                return 0
            if data.find(b"\\", s, e) >= 0:
                e = s  # an escape: read below
        else:
            self.clean = start
            m = self._search(data, start, end)
            if m is None:
                return 0
            s, e = m.span(1)
            if self._remember:
                self._prefix = data[start:s]
                self._prefix_clean = -1
        search = self._search
        total = 0
        while True:
            if e >= end:  # the text ends inside the string
                return total
            if data[e] == 34:  # '"': a string without escapes
                total += e - s
            else:
                e = _string_end(data, s, end)
                if e < 0:
                    return total
                total += _literal_bytes(data[s:e])
            m = search(data, e + 1, end)
            if m is None:
                return total
            s, e = m.span(1)


def _string_end(data: bytes, start: int, end: int) -> int:
    """Index of the closing quote of a JSON string whose body starts at `start`;
    -1 when it does not close before `end`."""
    k = data.find(b'"', start, end)
    while k >= 0:
        backslashes = 0
        m = k - 1
        while m >= start and data[m] == 92:  # '\\'
            backslashes += 1
            m -= 1
        if backslashes % 2 == 0:
            return k
        k = data.find(b'"', k + 1, end)
    return -1


def _literal_bytes(literal: bytes) -> int:
    if b"\\" not in literal:
        return len(literal)
    try:
        text = json.loads(b'"' + literal + b'"')
    except ValueError:
        return len(literal)
    return len(str(text).encode("utf-8", "surrogatepass"))
