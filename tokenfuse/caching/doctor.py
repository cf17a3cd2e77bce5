"""Why a conversation's prompt cache does not engage: fingerprints and a diagnosis.

A *turn print* is a compact fingerprint of one request's prompt in cache
order (tools, system, message content blocks): for each block a chained hash
of the prompt up to its end, and its end offset in text bytes; plus where the
cache markers are. Hashes only, never prompt text, so it can be kept in the
ledger (``prefix_fp``) and diagnosed later by ``tokenfuse cache-report``.

:func:`diagnose` compares two consecutive turns of one conversation and names
the first cause that explains a turn that read nothing from the cache: the
model has no caching; no marker; every marker below the model's minimum; the
content before the previous turn's marker changed (with the first differing
block and its byte offsets); the previous turn's entry expired before this
turn arrived. A turn that read from the cache has no cause.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tokenfuse.caching.inject import estimate_tokens, text_bytes
from tokenfuse.protocols.base import dumps

HEAD_BLOCKS = 48  # blocks kept in the ledger from the start of the prompt
TAIL_BLOCKS = 8  # ... and from its end (where the previous turn's marker sits)
# Head text kept in memory per conversation (live only) to show the exact span that changed.
KEEP_TEXT_BYTES = 16 * 1024
TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
CAUSES = ("no_caching_model", "no_marker", "below_minimum", "prefix_changes", "expired")


@dataclass(slots=True)
class TurnPrint:
    n_tools: int
    n_system: int
    # block index -> (end offset in text bytes, chained hash of the prompt up to its end)
    blocks: dict[int, tuple[int, int]]
    n_blocks: int
    markers: list[tuple[int, str]]  # (block index the marker ends, "5m" | "1h")
    messages: int
    texts: list[bytes] = field(default_factory=list, repr=False)  # live only, never stored
    message_hashes: list[int] = field(default_factory=list, repr=False)  # live only: one per message

    def continues(self, prev: TurnPrint) -> bool:
        """Does this prompt append to ``prev``'s history (its last message still at the same place)?"""
        k = prev.messages
        return (
            0 < k <= self.messages
            and len(prev.message_hashes) == k
            and len(self.message_hashes) >= k
            and self.message_hashes[k - 1] == prev.message_hashes[k - 1]
        )

    def encode(self) -> str:
        """Compact JSON for the ledger: hashes and offsets only."""
        keep = sorted(
            set(range(min(HEAD_BLOCKS, self.n_blocks)))
            | set(range(max(0, self.n_blocks - TAIL_BLOCKS), self.n_blocks))
            | {i for i, _ in self.markers}
        )
        return json.dumps(
            {
                "v": 1,
                "r": [self.n_tools, self.n_system],
                "n": self.n_blocks,
                "k": self.messages,
                "m": [[i, t] for i, t in self.markers],
                "b": [[i, *self.blocks[i]] for i in keep if i in self.blocks],
            },
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, text: str) -> TurnPrint | None:
        try:
            d = json.loads(text)
            return cls(
                n_tools=int(d["r"][0]),
                n_system=int(d["r"][1]),
                blocks={int(i): (int(end), int(h)) for i, end, h in d["b"]},
                n_blocks=int(d["n"]),
                markers=[(int(i), str(t)) for i, t in d["m"]],
                messages=int(d["k"]),
            )
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    def label(self, index: int) -> str:
        if index < self.n_tools:
            return f"tools[{index}]"
        if index < self.n_tools + self.n_system:
            return f"system[{index - self.n_tools}]"
        return f"message block {index - self.n_tools - self.n_system}"

    def start(self, index: int) -> int:
        prev = self.blocks.get(index - 1)
        return prev[0] if prev is not None else 0

    @property
    def total_bytes(self) -> int:
        last = self.blocks.get(self.n_blocks - 1)
        return last[0] if last is not None else 0


def _block_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k not in ("cache_control",)}
    return dumps(value, sort_keys=True)


def _ttl_of(marker: Any) -> str:
    return "1h" if isinstance(marker, dict) and marker.get("ttl") == "1h" else "5m"


def turn_print(body: dict[str, Any], *, keep_text: bool = False) -> TurnPrint:
    """The fingerprint of an Anthropic Messages or Bedrock Converse body."""
    items: list[tuple[Any, str | None]] = []  # (block, ttl of a marker right after it)

    def add(block: Any) -> None:
        if isinstance(block, dict) and "cachePoint" in block:
            if items:
                items[-1] = (items[-1][0], _ttl_of(block["cachePoint"]))
            return
        marker = block.get("cache_control") if isinstance(block, dict) else None
        items.append((block, _ttl_of(marker) if isinstance(marker, dict) else None))

    tools = body.get("tools")
    config = body.get("toolConfig")
    if not isinstance(tools, list) and isinstance(config, dict):
        tools = config.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        add(tool)
    n_tools = len(items)
    system = body.get("system")
    for part in [system] if isinstance(system, str) else system if isinstance(system, list) else []:
        add(part)
    n_system = len(items) - n_tools
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    bounds: list[int] = []  # index of each message's first block
    for message in messages:
        bounds.append(len(items))
        content = message.get("content") if isinstance(message, dict) else None
        for part in [content] if isinstance(content, str) else content if isinstance(content, list) else []:
            add(part)
    hasher = hashlib.blake2b(digest_size=4)
    blocks: dict[int, tuple[int, int]] = {}
    texts: list[bytes] = []
    own: list[int] = []  # hash of each block alone
    kept = 0
    offset = 0
    for i, (block, _) in enumerate(items):
        raw = _block_bytes(block)
        hasher.update(len(raw).to_bytes(4, "little"))
        hasher.update(raw)
        offset += text_bytes(block)
        blocks[i] = (offset, int.from_bytes(hasher.copy().digest(), "little"))
        own.append(hash(raw))
        if keep_text and i < HEAD_BLOCKS and kept < KEEP_TEXT_BYTES:
            # A text block's own text, so a span's offset is where the user would look for it.
            text = block.get("text") if isinstance(block, dict) else None
            shown = text.encode() if isinstance(text, str) else raw
            texts.append(shown[: KEEP_TEXT_BYTES - kept])
            kept += len(texts[-1])
    markers = [(i, ttl) for i, (_, ttl) in enumerate(items) if ttl is not None]
    ends = [*bounds[1:], len(items)] if bounds else []
    message_hashes = [hash(tuple(own[a:b])) for a, b in zip(bounds, ends, strict=True)]
    return TurnPrint(n_tools, n_system, blocks, len(items), markers, len(messages), texts, message_hashes)


@dataclass(frozen=True, slots=True)
class Cause:
    kind: str  # one of CAUSES
    message: str  # what and what to do
    data: dict[str, Any]


def diagnose(
    prev: TurnPrint,
    cur: TurnPrint,
    cache_read: int,
    gap_s: float,
    minimum: int | None,
    has_cache_price: bool = True,
) -> Cause | None:
    """Why ``cur`` read nothing from the cache ``prev`` could have left; None when it did or no cause is known."""
    if cache_read > 0 or cur.messages < prev.messages:
        return None
    if not cur.markers and not prev.markers:
        if minimum is None or estimate_tokens(prev.total_bytes) < minimum:
            return None  # nothing worth caching, nothing attempted
        return Cause(
            "no_marker",
            f"no cache marker: the repeated prefix (~{estimate_tokens(prev.total_bytes):,} tokens) is sent without "
            "cache_control / cachePoint, so the provider never caches it. Add a marker at the end of the stable part "
            "(or turn on caching.auto for this workflow)",
            {"prefix_tokens_est": estimate_tokens(prev.total_bytes)},
        )
    if minimum is None or not has_cache_price:
        return Cause(
            "no_caching_model",
            "the model has no prompt caching: its cache markers are ignored. Use a model with prompt caching "
            "(most Claude models, Amazon Nova) or drop the markers",
            {},
        )
    marked = cur.markers or prev.markers
    owner = cur if cur.markers else prev
    longest = max(estimate_tokens(owner.blocks[i][0]) for i, _ in marked if i in owner.blocks)
    if longest < minimum:
        return Cause(
            "below_minimum",
            f"every cache marker ends a prefix below the model's minimum of {minimum:,} tokens (longest ~{longest:,}); "
            "the provider ignores them. Move the marker later, after at least that much stable content",
            {"minimum_tokens": minimum, "prefix_tokens_est": longest},
        )
    if not prev.markers:
        return None  # the previous turn wrote nothing: a first write cannot be read yet
    first = first_difference(prev, cur, max(i for i, _ in prev.markers))
    if first is not None:
        start, end = prev.start(first), prev.blocks[first][0] if first in prev.blocks else -1
        return Cause(
            "prefix_changes",
            f"the prompt before the cache marker changes every turn: the first difference is in {cur.label(first)} "
            f"(text bytes {start:,}-{end:,} of the prompt), before the marker at byte "
            f"{prev.blocks[max(i for i, _ in prev.markers)][0]:,}, so every turn writes a new entry and reads none. "
            "Move what changes (timestamps, request ids, user ids, tool order) after the marker or make it stable",
            {"block": cur.label(first), "block_index": first, "offset": start, "block_end": end},
        )
    ttl = max((TTL_SECONDS[t] for _, t in prev.markers), default=300.0)
    if gap_s > ttl:
        return Cause(
            "expired",
            f"the cache entry expired between turns: {gap_s:,.0f} s passed, the marker's lifetime is {ttl:,.0f} s. "
            "Use ttl 1h for agents that pause longer than 5 minutes (caching.auto picks it from the observed gaps)",
            {"gap_s": round(gap_s, 1), "ttl_s": ttl},
        )
    return None


def first_difference(prev: TurnPrint, cur: TurnPrint, upto: int) -> int | None:
    """Index of the first block (at most ``upto``) where the two prompts' prefixes differ, None if none known."""
    known = [i for i in sorted(prev.blocks) if i <= upto and i in cur.blocks]
    for i in known:
        if prev.blocks[i][1] != cur.blocks[i][1]:
            # Chained hashes: the change lies after the previous equal block we know of.
            before = [j for j in known if j < i]
            return before[-1] + 1 if before else 0
    if upto not in cur.blocks and upto >= cur.n_blocks:
        return upto
    return None


def first_differing_span(prev: bytes, cur: bytes, width: int = 40) -> tuple[int, str, str]:
    """Offset of the first differing byte of two block texts and a short excerpt of each from there (live use)."""
    n = min(len(prev), len(cur))
    i = next((k for k in range(n) if prev[k] != cur[k]), n)
    return i, prev[i : i + width].decode(errors="replace"), cur[i : i + width].decode(errors="replace")
