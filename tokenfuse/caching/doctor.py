"""Why a conversation's prompt cache does not engage: fingerprints and a diagnosis.

A *turn print* is a compact fingerprint of one request's prompt in cache
order (tools, system, message content blocks): for each block a chained hash
of the prompt up to its end, and its end offset in text bytes; plus where the
cache markers are. Hashes only, never prompt text, so it can be kept in the
ledger (``prefix_fp``) and diagnosed later by ``tokenfuse cache-report``.
It is computed per segment (the tools, the system prompt, each message), each
continuing the hash where the one before ended, so :func:`turn_print_of` takes
the segments of turns the conversation's previous request already had from
:mod:`tokenfuse.history` and hashes only the new ones.

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
from itertools import chain
from typing import Any, cast

from tokenfuse.caching.inject import estimate_tokens, text_bytes
from tokenfuse.history import HISTORY, History, Node
from tokenfuse.protocols.base import RequestInfo, dumps

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


@dataclass(slots=True, eq=False)  # not frozen: a frozen init costs ~2 µs, once per message of a new turn list
class _Segment:
    """One run of blocks (the tools, the system prompt, one message) after everything before it.

    Counts, offsets and hashes are of the prompt up to the segment's end, so a
    segment holds only for what precedes it: :mod:`tokenfuse.history` keeps one
    per conversation turn, where that is fixed."""

    hasher: Any  # blake2b after the segment's last block, continued by the next segment
    offset: int  # text bytes up to its end
    count: int  # blocks up to its end
    kept: int  # text bytes kept (``texts``) up to its end
    blocks: tuple[tuple[int, int], ...]  # its blocks' (end offset, chained hash)
    markers: tuple[tuple[int, str], ...]  # (block index, ttl) of its blocks' markers
    lead: str | None  # a cachePoint before its first block marks the block before the segment
    own: int  # hash of its blocks' bytes, in order (one per message: TurnPrint.message_hashes)
    texts: tuple[bytes, ...]  # live only: its blocks' text among the first HEAD_BLOCKS, up to KEEP_TEXT_BYTES

    @property
    def nbytes(self) -> int:
        """About what it holds in memory (tests/test_history.py measures it)."""
        texts = self.texts
        return 640 + 150 * len(self.blocks) + 80 * len(self.markers) + 40 * len(texts) + sum(map(len, texts))


_NO_BLOCKS = hash(())
# A segment's hasher is copied, never updated, once made: one with nothing hashed can be shared.
_START = _Segment(hashlib.blake2b(digest_size=4), 0, 0, 0, (), (), None, _NO_BLOCKS, ())


def _segment(prev: _Segment | None, parts: list[Any]) -> _Segment:
    if not parts:  # no tools, an empty message
        if prev is None:
            return _START
        return _Segment(prev.hasher, prev.offset, prev.count, prev.kept, (), (), None, _NO_BLOCKS, ())
    hasher = prev.hasher.copy() if prev is not None else hashlib.blake2b(digest_size=4)
    offset, count, kept = (prev.offset, prev.count, prev.kept) if prev is not None else (0, 0, 0)
    start = count
    ttls: list[str | None] = []
    lead: str | None = None
    blocks: list[tuple[int, int]] = []
    own: list[int] = []
    texts: list[bytes] = []
    for part in parts:
        if isinstance(part, dict) and "cachePoint" in part:
            # A Bedrock cache point marks the block before it, which may end an earlier segment.
            if ttls:
                ttls[-1] = _ttl_of(part["cachePoint"])
            else:
                lead = _ttl_of(part["cachePoint"])
            continue
        marker = part.get("cache_control") if isinstance(part, dict) else None
        ttls.append(_ttl_of(marker) if isinstance(marker, dict) else None)
        raw = _block_bytes(part)
        hasher.update(len(raw).to_bytes(4, "little"))
        hasher.update(raw)
        offset += text_bytes(part)
        blocks.append((offset, int.from_bytes(hasher.copy().digest(), "little")))
        own.append(hash(raw))
        if count < HEAD_BLOCKS and kept < KEEP_TEXT_BYTES:
            # A text block's own text, so a span's offset is where the user would look for it.
            text = part.get("text") if isinstance(part, dict) else None
            shown = text.encode() if isinstance(text, str) else raw
            texts.append(shown[: KEEP_TEXT_BYTES - kept])
            kept += len(texts[-1])
        count += 1
    markers = tuple((start + j, t) for j, t in enumerate(ttls) if t is not None) if any(ttls) else ()
    return _Segment(hasher, offset, count, kept, tuple(blocks), markers, lead, hash(tuple(own)), tuple(texts))


def _head_parts(body: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    tools = body.get("tools")
    config = body.get("toolConfig")
    if not isinstance(tools, list) and isinstance(config, dict):
        tools = config.get("tools")
    system = body.get("system")
    return (
        tools if isinstance(tools, list) else [],
        [system] if isinstance(system, str) else system if isinstance(system, list) else [],
    )


def _parts(message: Any) -> list[Any]:
    content = message.get("content") if isinstance(message, dict) else None
    return [content] if isinstance(content, str) else content if isinstance(content, list) else []


def _assemble(head: tuple[_Segment, _Segment], turns: list[_Segment], keep_text: bool) -> TurnPrint:
    segs = [*head, *turns]
    markers: list[tuple[int, str]] = []
    texts: list[bytes] = []
    # Few segments (most requests) in one pass; many (a long conversation) in C-speed passes.
    for seg in segs if len(segs) <= 8 else [s for s in segs if s.markers or s.lead is not None or s.texts]:
        if seg.lead is not None:
            start = seg.count - len(seg.blocks)  # blocks before this segment
            if start > 0:
                if markers and markers[-1][0] == start - 1:
                    markers[-1] = (start - 1, seg.lead)
                else:
                    markers.append((start - 1, seg.lead))
        if seg.markers:
            markers.extend(seg.markers)
        if keep_text and seg.texts:
            texts.extend(seg.texts)
    blocks = dict(enumerate(chain.from_iterable([seg.blocks for seg in segs])))
    tools, system = head
    return TurnPrint(
        tools.count, system.count - tools.count, blocks, segs[-1].count, markers, len(turns), texts,
        [s.own for s in turns],
    )


def turn_print(body: dict[str, Any], *, keep_text: bool = False) -> TurnPrint:
    """The fingerprint of an Anthropic Messages or Bedrock Converse body."""
    tools, system = _head_parts(body)
    first = _segment(None, tools)
    head = (first, _segment(first, system))
    messages = body.get("messages")
    segs: list[_Segment] = []
    prev = head[1]
    for message in messages if isinstance(messages, list) else []:
        prev = _segment(prev, _parts(message))
        segs.append(prev)
    return _assemble(head, segs, keep_text)


def turn_print_of(info: RequestInfo, history: History = HISTORY) -> TurnPrint:
    """``turn_print(info.body, keep_text=True)``, with the segments of turns an earlier request of the
    conversation already had taken from ``history`` instead of hashed again."""
    body = info.body
    messages = body.get("messages")
    if not isinstance(messages, list) or info.prompt_bytes < history.min_bytes:
        return turn_print(body, keep_text=True)  # a short body is not remembered: no walk to pay for
    seen = history.walk(info, "messages", messages)
    new: list[tuple[Node, Any, int]] = []
    head = seen.root.extra
    if not isinstance(head, tuple):
        tools, system = _head_parts(body)
        first = _segment(None, tools)
        head = (first, _segment(first, system))
        new.append((seen.root, head, head[0].nbytes + head[1].nbytes))
    segs = [node.extra for node in seen.nodes]
    if None in segs:  # turns no request of this conversation had before
        for i in range(segs.index(None), len(segs)):
            if segs[i] is None:
                seg = segs[i] = _segment(segs[i - 1] if i else head[1], _parts(messages[i]))
                new.append((seen.nodes[i], seg, seg.nbytes))
    if new and seen.root.stored:
        history.attach(seen, new)
    return _assemble(head, cast(list[_Segment], segs), True)


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
