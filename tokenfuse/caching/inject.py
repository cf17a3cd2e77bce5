"""Placing prompt-cache breakpoints in a request body the caller left unmarked.

Pure functions over a parsed :class:`RequestInfo`: no I/O, no state. The
caller (``tokenfuse.caching.verify.AutoCache``) decides *whether* to inject and
with which lifetime; this module decides *where*:

* Anthropic Messages (and Bedrock InvokeModel with a Claude body): a
  ``cache_control`` on the end of the stable head (tools, system), on the last
  user message of the previous turn (which the previous request wrote) and on
  the last user message (written now, read by the next turn). The provider
  needs the whole prefix up to a breakpoint to reach the model's minimum.
* Bedrock Converse: ``cachePoint`` blocks on a grid of user-message ends in
  which every segment reaches the minimum (Bedrock counts the minimum per
  checkpoint). The grid depends only on the prefix, so the previous turn
  placed the same points and the next turn finds them.

Changing ``info.body`` goes through ``body_changed`` so the forwarded bytes
(``encode_body``) carry the markers, and ``cache_writes_possible`` /
``cache_1h`` are set so ``compute_bound`` prices the writes: the bound stays
an upper bound.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenfuse.protocols.base import RequestInfo, body_changed, encoded_body

MAX_MARKERS = 4  # Anthropic's and Bedrock's limit per request
# Tokens are estimated as text bytes / 5: Claude averages 3.5-4 bytes per token
# on prose and code, so this undercounts, and a breakpoint is never placed on a
# prefix the provider would find too short (it would ignore it silently).
BYTES_PER_TOKEN = 5
TTLS = ("5m", "1h")

# Minimum cacheable prefix in tokens (Anthropic prompt-caching docs, Bedrock's
# model table); the first fragment found in the model id wins.
_MINIMUMS: tuple[tuple[str, int], ...] = (
    ("opus-4-6", 4096),
    ("opus-4-5", 4096),
    ("haiku-4-5", 4096),
    ("haiku", 2048),  # Claude 3 / 3.5 Haiku
    ("claude", 1024),  # Sonnet 3.7, 4, 4.5, 4.6; Opus 4, 4.1
    ("nova", 1024),
)
_NO_MARK_TYPES = frozenset({"thinking", "redacted_thinking"})
_FREE_KEYS = frozenset({"type", "role", "cache_control", "cachePoint", "id", "tool_use_id", "toolUseId"})


def min_cacheable_tokens(model: str) -> int | None:
    """The model's minimum cacheable prefix, or None when it has no prompt caching."""
    name = model.lower().replace(".", "-")
    for fragment, tokens in _MINIMUMS:
        if fragment in name:
            return tokens
    return None


def estimate_tokens(nbytes: int) -> int:
    """A lower estimate of the tokens in ``nbytes`` of prompt text."""
    return nbytes // BYTES_PER_TOKEN


@dataclass(frozen=True, slots=True)
class Injection:
    """What :func:`inject` did: ``markers`` placed (0 with ``skipped`` saying why)."""

    markers: int
    ttl: str
    skipped: str | None = None
    prefix_tokens: int = 0  # estimated tokens up to the last marker placed


@dataclass(slots=True)
class _Slot:
    end_bytes: int  # text bytes of the prompt up to and including this position
    key: str  # top-level member it changes
    place: Callable[[str], None]
    head: bool  # end of tools/system rather than a message
    message: int = -1  # index of the message it ends


def supports(info: RequestInfo) -> bool:
    """Is this route and body one :func:`inject` knows how to mark?"""
    return _shape(info) is not None


def _shape(info: RequestInfo) -> str | None:
    if info.protocol == "anthropic" and info.route == "messages":
        return "anthropic"
    if info.protocol == "bedrock":
        if info.route.startswith("converse"):
            return "converse"
        if info.route.startswith("invoke") and "anthropic_version" in info.body:
            return "anthropic"
    return None


def inject(info: RequestInfo, ttl: str = "5m") -> Injection:
    """Place breakpoints in ``info.body`` (in place) unless the caller placed its own."""
    if ttl not in TTLS:
        raise ValueError(f"ttl must be one of {TTLS}, got {ttl!r}")
    shape = _shape(info)
    if shape is None:
        return Injection(0, ttl, "route without cache breakpoints")
    if info.cache_writes_possible:
        return Injection(0, ttl, "the caller placed its own cache markers")
    minimum = min_cacheable_tokens(info.model)
    if minimum is None:
        return Injection(0, ttl, f"model {info.model} has no prompt caching")
    nova = "nova" in info.model.lower()
    if nova:
        ttl = "5m"  # Nova caches for 5 minutes only
    if shape == "anthropic":
        slots = _anthropic_slots(info.body)
        chosen = _choose_whole_prefix(slots, info.body.get("messages"), minimum)
    else:
        slots = _converse_slots(info.body, tools=not nova)
        chosen = _choose_grid(slots, minimum)
    if not chosen:
        return Injection(0, ttl, f"prefix below the model's minimum of {minimum:,} tokens")
    before = len(encoded_body(info))
    for slot in chosen:
        slot.place(ttl)
    body_changed(info, *dict.fromkeys(s.key for s in chosen))
    info.cache_writes_possible = True
    info.cache_1h = info.cache_1h or ttl == "1h"
    # The markers add bytes, never tokens; keeping prompt_bytes >= the body's
    # length keeps the documented invariant all the same.
    info.prompt_bytes += max(0, len(encoded_body(info)) - before)
    return Injection(len(chosen), ttl, None, estimate_tokens(chosen[-1].end_bytes))


# --- choosing ----------------------------------------------------------------


def _choose_whole_prefix(slots: list[_Slot], messages: Any, minimum: int) -> list[_Slot]:
    """Head end, the previous turn's last user message, the last user message."""
    heads = [s for s in slots if s.head]
    users = [s for s in slots if not s.head]
    wanted: list[_Slot] = []
    if heads:
        wanted.append(heads[-1])
    prev = _previous_turn_end(messages)
    if prev is not None:
        wanted.extend(s for s in users if s.message == prev)
    if users and isinstance(messages, list) and users[-1].message == len(messages) - 1:
        wanted.append(users[-1])
    out: list[_Slot] = []
    for slot in wanted:
        if estimate_tokens(slot.end_bytes) >= minimum and slot not in out:
            out.append(slot)
    return out[-MAX_MARKERS:]


def _choose_grid(slots: list[_Slot], minimum: int) -> list[_Slot]:
    """Greedy grid: a point wherever the segment since the previous point reaches the minimum."""
    grid: list[_Slot] = []
    base = 0
    for slot in slots:
        if estimate_tokens(slot.end_bytes) - estimate_tokens(base) >= minimum:
            grid.append(slot)
            base = slot.end_bytes
    return grid[-MAX_MARKERS:]


def _previous_turn_end(messages: Any) -> int | None:
    """Index of the last user message before the final assistant message: where
    the previous request of an agent loop ended."""
    if not isinstance(messages, list):
        return None
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, dict) and m.get("role") == "assistant":
            for j in range(i - 1, -1, -1):
                p = messages[j]
                if isinstance(p, dict) and p.get("role") == "user":
                    return j
            return None
    return None


# --- Anthropic ---------------------------------------------------------------


def text_bytes(value: Any) -> int:
    """UTF-8 bytes of the strings in ``value``, leaving out the values of _FREE_KEYS.

    Runs once per content block of every Anthropic and Bedrock request, so the
    common shapes take the short way: an ASCII string's byte count is its
    length (isascii() reads a flag; encode() copies), and a dict's string values
    are counted without a trip through the stack."""
    if value.__class__ is str:
        return len(value) if value.isascii() else len(value.encode())
    total = 0
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        cls = item.__class__
        if cls is dict:
            for k, v in item.items():
                if k in _FREE_KEYS:
                    continue
                vcls = v.__class__
                if vcls is str:
                    total += len(v) if v.isascii() else len(v.encode())
                elif vcls is dict or vcls is list:
                    push(v)
        elif cls is list:
            stack.extend(item)
        elif cls is str:
            total += len(item) if item.isascii() else len(item.encode())
    return total


def _control(ttl: str) -> dict[str, str]:
    return {"type": "ephemeral", "ttl": "1h"} if ttl == "1h" else {"type": "ephemeral"}


def _mark_anthropic_block(block: dict[str, Any]) -> Callable[[str], None]:
    def place(ttl: str) -> None:
        block["cache_control"] = _control(ttl)

    return place


def _anthropic_slots(body: dict[str, Any]) -> list[_Slot]:
    slots: list[_Slot] = []
    offset = 0
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        offset += sum(text_bytes(t) for t in tools)
        if isinstance(tools[-1], dict):
            slots.append(_Slot(offset, "tools", _mark_anthropic_block(tools[-1]), True))
    system = body.get("system")
    if isinstance(system, str) and system:
        offset += len(system.encode())

        def place_system(ttl: str) -> None:
            body["system"] = [{"type": "text", "text": system, "cache_control": _control(ttl)}]

        slots.append(_Slot(offset, "system", place_system, True))
    elif isinstance(system, list) and system:
        offset += text_bytes(system)
        last = system[-1]
        if isinstance(last, dict) and last.get("type") == "text" and last.get("text"):
            slots.append(_Slot(offset, "system", _mark_anthropic_block(last), True))
    messages = body.get("messages")
    if not isinstance(messages, list):
        return slots
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        offset += text_bytes(content)
        if message.get("role") != "user":
            continue
        place = _anthropic_message_place(message, content)
        if place is not None:
            slots.append(_Slot(offset, "messages", place, False, index))
    return slots


def _anthropic_message_place(message: dict[str, Any], content: Any) -> Callable[[str], None] | None:
    if isinstance(content, str):
        if not content:
            return None

        def place(ttl: str) -> None:
            message["content"] = [{"type": "text", "text": content, "cache_control": _control(ttl)}]

        return place
    if isinstance(content, list) and content:
        last = content[-1]
        if not isinstance(last, dict) or last.get("type") in _NO_MARK_TYPES:
            return None
        if last.get("type") == "text" and not last.get("text"):
            return None  # the API refuses cache_control on an empty text block
        return _mark_anthropic_block(last)
    return None


# --- Bedrock Converse --------------------------------------------------------


def _point(ttl: str) -> dict[str, Any]:
    point: dict[str, Any] = {"type": "default"}
    if ttl == "1h":
        point["ttl"] = "1h"
    return {"cachePoint": point}


def _append_point(items: list[Any]) -> Callable[[str], None]:
    def place(ttl: str) -> None:
        items.append(_point(ttl))

    return place


def _converse_slots(body: dict[str, Any], *, tools: bool) -> list[_Slot]:
    slots: list[_Slot] = []
    offset = 0
    config = body.get("toolConfig")
    specs = config.get("tools") if isinstance(config, dict) else None
    if isinstance(specs, list) and specs:
        offset += text_bytes(specs)
        if tools:
            slots.append(_Slot(offset, "toolConfig", _append_point(specs), True))
    system = body.get("system")
    if isinstance(system, list) and system:
        offset += text_bytes(system)
        slots.append(_Slot(offset, "system", _append_point(system), True))
    messages = body.get("messages")
    if not isinstance(messages, list):
        return slots
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        offset += text_bytes(content)
        if message.get("role") == "user" and isinstance(content, list) and content:
            slots.append(_Slot(offset, "messages", _append_point(content), False, index))
    return slots
