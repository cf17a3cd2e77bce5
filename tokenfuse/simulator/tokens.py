"""The simulator's deterministic token model.

Counting is by bytes, not by a real tokenizer, so that a test can predict every
figure from the request alone: a text of ``n`` UTF-8 bytes is ``ceil(n / 4)``
tokens, and generated text is exactly four bytes per token.

Prompt caching is modelled per process. A request's prompt is a sequence of
blocks; a *marker* (Anthropic ``cache_control``, Bedrock ``cachePoint``) ends a
cacheable prefix. The longest block-aligned prefix already cached is read, the
rest up to the last marker is written, and what follows is uncached input.
OpenAI caches automatically: prompts of 1024 tokens or more, in 128-token steps.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenfuse.usage import Usage

TTL_5M = 300.0
TTL_1H = 3600.0
OPENAI_MIN_PREFIX = 1024
OPENAI_STEP = 128
# OpenAI keeps an idle prefix for "5 to 10 minutes"; the lower bound is the
# predictable choice.
OPENAI_TTL = 300.0

_LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat. "
)
_LOREM = _LOREM + " " * (-len(_LOREM) % 4)
_POOL_TOKENS = 1 << 14
_POOL = _LOREM * (_POOL_TOKENS * 4 // len(_LOREM) + 1)


def count_bytes(nbytes: int) -> int:
    """Tokens for ``nbytes`` of text: ceil(nbytes / 4)."""
    return (nbytes + 3) // 4


def prompt_tokens(nbytes: int) -> int:
    """Tokens a prompt of ``nbytes`` is billed as: never zero."""
    return max(1, (nbytes + 3) // 4)


def generated_text(tokens: int) -> str:
    """ASCII text of exactly ``4 * tokens`` bytes."""
    size = 4 * tokens
    if size <= len(_POOL):
        return _POOL[:size]
    return (_POOL * (size // len(_POOL) + 1))[:size]


@dataclass(frozen=True, slots=True)
class Block:
    """One unit of prompt content; ``marker`` is the TTL in seconds of a cache
    breakpoint placed right after it, or None."""

    text: bytes
    marker: float | None = None


class PromptCache:
    """Prefix digests with expiry, shared by every request of one process."""

    __slots__ = ("_clock", "_entries", "_limit")

    def __init__(self, clock: Callable[[], float] = time.monotonic, limit: int = 200_000) -> None:
        self._clock = clock
        self._entries: dict[bytes, float] = {}
        self._limit = limit

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def now(self) -> float:
        return self._clock()

    def hit(self, digest: bytes, now: float) -> bool:
        expiry = self._entries.get(digest)
        return expiry is not None and expiry > now

    def put(self, digest: bytes, expiry: float) -> None:
        old = self._entries.pop(digest, None)
        self._entries[digest] = expiry if old is None else max(old, expiry)
        if len(self._entries) > self._limit:
            # Dicts keep insertion order and put() re-inserts, so the first
            # entries are the least recently touched.
            for key in list(self._entries)[: self._limit // 10]:
                del self._entries[key]


def _prefix_digests(namespace: str, blocks: Sequence[Block]) -> list[tuple[int, bytes]]:
    """(byte offset, digest) at the end of every block."""
    hasher = hashlib.blake2b(namespace.encode(), digest_size=16)
    out: list[tuple[int, bytes]] = []
    offset = 0
    for block in blocks:
        # The length prefix keeps "ab"+"c" and "a"+"bc" apart.
        hasher.update(len(block.text).to_bytes(8, "little"))
        hasher.update(block.text)
        offset += len(block.text)
        out.append((offset, hasher.copy().digest()))
    return out


def marked_input(namespace: str, blocks: Sequence[Block], cache: PromptCache) -> Usage:
    """Input usage of a prompt with explicit cache markers (Anthropic, Bedrock)."""
    total = prompt_tokens(sum(len(b.text) for b in blocks))
    last = max((i for i, b in enumerate(blocks) if b.marker is not None), default=-1)
    if last < 0:
        return Usage(input_uncached=total)
    now = cache.now()
    digests = _prefix_digests(namespace, blocks[: last + 1])
    read_bytes = 0
    for offset, digest in reversed(digests):
        if cache.hit(digest, now):
            read_bytes = offset
            break
    usage = Usage(cache_read=count_bytes(read_bytes))
    covered = usage.cache_read
    # Each marker's TTL covers the blocks from the previous marker up to it.
    ttl_of_block: list[float] = [0.0] * (last + 1)
    pending: list[int] = []
    for i, block in enumerate(blocks[: last + 1]):
        pending.append(i)
        if block.marker is not None:
            for j in pending:
                ttl_of_block[j] = block.marker
            offset = digests[i][0]
            tokens = count_bytes(offset) - covered
            if tokens > 0:
                if block.marker >= TTL_1H:
                    usage.cache_write_1h += tokens
                else:
                    usage.cache_write += tokens
                covered += tokens
            pending = []
    for i, (_, digest) in enumerate(digests):
        cache.put(digest, now + ttl_of_block[i])
    usage.input_uncached = total - covered
    return usage


# A provider looks for earlier cache entries at each breakpoint and at most this
# many block boundaries before it (Anthropic's documented lookback window).
LOOKBACK_BLOCKS = 20


def provider_marked_input(
    namespace: str, blocks: Sequence[Block], cache: PromptCache, min_tokens: int | None, *, per_segment: bool
) -> Usage:
    """Input usage under the providers' documented caching rules.

    Only a breakpoint whose prefix reaches ``min_tokens`` counts (Anthropic: the
    whole prefix up to it; Bedrock, ``per_segment``: the tokens since the
    previous counted breakpoint). ``min_tokens`` None: the model has no prompt
    caching and every marker is ignored. Entries are written at counted
    breakpoints only; a lookup at each breakpoint checks it and the
    ``LOOKBACK_BLOCKS`` boundaries before it, and the longest hit is read.
    """
    total = prompt_tokens(sum(len(b.text) for b in blocks))
    if min_tokens is None:
        return Usage(input_uncached=total)
    ends: list[int] = []
    offset = 0
    for block in blocks:
        offset += len(block.text)
        ends.append(offset)
    counted: list[int] = []  # block indexes of breakpoints that count
    base = 0
    for i, block in enumerate(blocks):
        if block.marker is None:
            continue
        tokens = count_bytes(ends[i]) - (count_bytes(ends[base]) if per_segment and counted else 0)
        if tokens >= min_tokens:
            counted.append(i)
            base = i
    if not counted:
        return Usage(input_uncached=total)
    now = cache.now()
    digests = _prefix_digests(namespace, blocks[: counted[-1] + 1])
    read_at = -1
    for i in counted:
        for j in range(i, max(-1, i - LOOKBACK_BLOCKS - 1), -1):
            if j <= read_at:
                break
            if cache.hit(digests[j][1], now):
                read_at = j
                break
    usage = Usage(cache_read=count_bytes(ends[read_at]) if read_at >= 0 else 0)
    covered = usage.cache_read
    if read_at >= 0:
        cache.put(digests[read_at][1], now + _ttl_at(blocks, counted, read_at))  # a read renews the entry
    for i in counted:
        ttl = blocks[i].marker or TTL_5M
        tokens = count_bytes(ends[i]) - covered
        if tokens > 0:
            if ttl >= TTL_1H:
                usage.cache_write_1h += tokens
            else:
                usage.cache_write += tokens
            covered += tokens
        cache.put(digests[i][1], now + ttl)
    usage.input_uncached = total - covered
    return usage


def _ttl_at(blocks: Sequence[Block], counted: list[int], index: int) -> float:
    """The lifetime a read at block ``index`` renews: that of the first counted breakpoint at or after it."""
    for i in counted:
        if i >= index:
            return blocks[i].marker or TTL_5M
    return TTL_5M


def automatic_input(namespace: str, text: bytes, cache: PromptCache) -> Usage:
    """Input usage under OpenAI's automatic prefix caching."""
    total = prompt_tokens(len(text))
    if total < OPENAI_MIN_PREFIX:
        return Usage(input_uncached=total)
    now = cache.now()
    hasher = hashlib.blake2b(namespace.encode(), digest_size=16)
    done = 0
    cached = 0
    for tokens in range(OPENAI_MIN_PREFIX, total + 1, OPENAI_STEP):
        end = min(4 * tokens, len(text))
        hasher.update(text[done:end])
        done = end
        digest = hasher.copy().digest()
        if cache.hit(digest, now):
            cached = tokens
        cache.put(digest, now + OPENAI_TTL)
    return Usage(input_uncached=total - cached, cache_read=cached)
