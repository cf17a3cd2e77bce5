"""Tighter input bounds for a request that continues a conversation the gateway has seen.

An agent loop resends its whole conversation every turn and adds a few
kilobytes. Bounding all of it by bytes counts a 60 kB prompt as 60,000 tokens
when the provider bills about 15,000. But the gateway saw the previous turn and
the provider told it exactly how many input tokens that request was: when this
request is that request plus new turns, the shared part is bounded by that
exact figure, and only the new turns by bytes plus a per-turn overhead. Why
that is still an upper bound is argued in docs/limits.md ("Continuing a
conversation").

A conversation is the request's turn list (``messages``, or a Responses
``input`` list) after a *head*: every other top-level member of the body except
those that cannot change the input (output limits, sampling, streaming). The
key of "head + first k turns" is a chained digest over the protocol, route,
model, head and turns (``tokenfuse/history.py``, which remembers it per turn so
a conversation's earlier turns are not hashed again), scoped to the principal,
so any change to the system prompt, the tools or an earlier turn misses and
falls back to bytes. Cache markers (``cache_control``, ``cachePoint``) are not
text the provider counts; they are left out of the digest because agents move
them to the newest turn every time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

from tokenfuse.history import HISTORY, History, Node
from tokenfuse.protocols.base import DOCUMENT_TOKEN_BOUND, IMAGE_TOKEN_BOUND, RequestInfo, _scan
from tokenfuse.usage import Usage

# Tokens a turn may cost beyond the bytes of its JSON: role header, separators,
# the turn's framing in the provider's prompt template. Published templates use
# 3-7 (OpenAI: 3 per message plus 3 to prime the reply; Anthropic's and
# Bedrock's "\n\nHuman: "/"\n\nAssistant: " are fewer); its JSON already
# spends 30+ bytes on `{"role":..,"content":..}`, so this is a margin on a margin.
OVERHEAD_PER_TURN = 16
MAX_ENTRIES = 20_000

def _turns(info: RequestInfo) -> tuple[str, list[Any]] | None:
    body = info.body
    messages = body.get("messages")
    if isinstance(messages, list):
        return "messages", messages
    value = body.get("input")
    if info.route == "responses" and isinstance(value, list):
        return "input", value
    return None


def media_bound(value: Any) -> int:
    """Tokens the images and documents inside ``value`` may add beyond its bytes."""
    images, documents, _, _ = _scan({"turn": value}, "invalid_request_error")
    return images * IMAGE_TOKEN_BOUND + documents * DOCUMENT_TOKEN_BOUND


class _Keys(Sequence[bytes]):
    """``chain[k]``: the principal's key of head + first k turns, made when read (a lookup reads
    a few from the end). The principal's name, a separator, then the fixed-length digest: no two
    (principal, prefix) pairs give the same key, and no hashing is spent on scoping."""

    __slots__ = ("_nodes", "_scope")

    def __init__(self, scope: str, nodes: tuple[Node, ...]) -> None:
        self._scope = scope.encode("utf-8", "surrogatepass") + b"\0"
        self._nodes = nodes  # the head's, then each turn's

    def __len__(self) -> int:
        return len(self._nodes)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(index, slice):
            return [self._scope + node.digest for node in self._nodes[index]]
        return self._scope + self._nodes[index].digest


@dataclass(slots=True)  # not frozen: built per request, and a frozen init costs a microsecond more
class Conversation:
    """A request seen as head + turns: ``chain[k]`` is the key of head + first k turns."""

    chain: Sequence[bytes]
    turns: Sequence[Any]
    nodes: tuple[Node, ...]  # one per turn (tokenfuse/history.py)

    @property
    def key(self) -> bytes:
        """The key this whole request is remembered under."""
        return self.chain[-1]

    @property
    def sizes(self) -> tuple[int, ...]:
        """Bytes of each turn's JSON, markers left out."""
        return tuple(node.size for node in self.nodes)

    def suffix_bound(self, k: int) -> int:
        """Upper bound on the input tokens of turns k.. when they follow a known prefix."""
        rest = range(k, len(self.turns))
        return sum(self.nodes[i].size + media_bound(self.turns[i]) + OVERHEAD_PER_TURN for i in rest)


def conversation(info: RequestInfo, scope: str, history: History = HISTORY) -> Conversation | None:
    """The request as a conversation, or None when it has no turn list."""
    found = _turns(info)
    if found is None:
        return None
    name, turns = found
    seen = history.walk(info, name, turns)
    return Conversation(_Keys(scope, (seen.root, *seen.nodes)), tuple(turns), seen.nodes)


class PrefixBounds:
    """Exact input tokens of recent requests, by conversation key (a bounded LRU).

    Per process: a request whose previous turn went through another replica
    finds nothing and is bounded by bytes, which is still a true bound.
    """

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._max = max_entries
        self._known: OrderedDict[bytes, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def input_bound(self, conv: Conversation) -> int | None:
        """The tightest bound a recorded prefix gives, or None when no prefix is known."""
        known = self._known
        for k in range(len(conv.chain) - 1, -1, -1):
            exact = known.get(conv.chain[k])
            if exact is not None:
                known.move_to_end(conv.chain[k])
                return exact + conv.suffix_bound(k)
        return None

    def record(self, key: bytes, usage: Usage) -> None:
        """Remember the provider's exact input count for the request remembered as ``key``."""
        if usage.estimated or usage.input_total <= 0:
            return  # only figures the provider reported bound a later request
        known = self._known
        known[key] = usage.input_total
        known.move_to_end(key)
        while len(known) > self._max:
            known.popitem(last=False)
