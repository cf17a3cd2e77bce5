"""Conversations seen recently, turn by turn, so a request that continues one does not redo its prefix.

An agent loop re-sends its whole conversation every step and appends a turn or
two. What the gateway works out per turn — the conversation-prefix key
(``limits/prefix.py``) and the cache doctor's fingerprint
(``caching/doctor.py``) — is the same, turn for turn, as for the previous
request. This module remembers conversations as a trie: a root per *head*
(protocol, route, model, and every top-level member but the turn list and
those that cannot change the input) and a node per turn, keyed by the turn's
bytes in the request's canonical encoding. Equal bytes, and only equal bytes,
reach the node where an earlier request left its results; an edited, dropped
or reordered turn leaves the path there and everything after it is computed
afresh.

Finding the nodes costs no encoding: the canonical encoding of the turn list is
made anyway to forward the body (``protocols/base.py``, ``Canonical``), and a
node matches where those bytes continue with its own. Only a turn the trie has
not seen is encoded here, once: its canonical bytes (the node's key), its bytes
without cache markers (``size``) and the chained SHA-256 of the conversation up
to it without markers (``digest``), which the prefix key scopes. Consumers
keep one per-turn result each on the node (``extra``).

Bounded: ``max_bytes`` in total (each node's turn bytes plus an estimate of its
objects and of what consumers attach, measured in tests/test_history.py) and
``max_path_bytes`` per conversation (turns past it are computed for the request
and not kept). The least recently used node goes first; a walk touches its
nodes from the newest turn back to the root, so that node is always a leaf and
eviction never strands a subtree. A node that differs from its sibling only by
cache markers (the marker moved to the newest turn) replaces it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Mapping
from operator import attrgetter
from typing import Any, NamedTuple

from tokenfuse.protocols.base import RequestInfo, dumps, encoded_body

MAX_BYTES = 64 * 1024 * 1024
MAX_PATH_BYTES = 8 * 1024 * 1024
MIN_BYTES = 2048  # turn lists shorter than this are computed each time, never kept
# A node's own objects beyond its turn bytes: the node, its digest, its entry
# in the LRU and in its parent's children (tests/test_history.py measures it).
NODE_BYTES = 480

# Members that choose how the answer is generated, never what the input is.
FREE_KEYS = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "max_output_tokens",
        "stream",
        "stream_options",
        "metadata",
        "temperature",
        "top_p",
        "top_k",
    }
)
# The common prefix of both marker keys: one scan finds either.
_MARKER = b'"cache'
# The stdlib spelling of Canonical's members (orjson's is ``dumps``): a turn's key is its slice of one.
_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_AFTER = (b",", b"]")  # what follows a turn in the member: no number runs on past its node's key
_COST = attrgetter("cost")
_LENGTH = struct.Struct("<Q").pack  # a length as 8 little-endian bytes


def strip_markers(value: Any) -> Any:
    """``value`` without cache markers: ``cache_control`` keys and ``{"cachePoint": ...}`` elements."""
    if isinstance(value, dict):
        return {k: strip_markers(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [strip_markers(v) for v in value if not (isinstance(v, dict) and len(v) == 1 and "cachePoint" in v)]
    return value


def unmarked(value: Any) -> bytes:
    """Compact JSON of ``value`` without cache markers (``dumps``: orjson's spelling, kept in-process)."""
    raw = dumps(value)
    if _MARKER in raw:
        raw = dumps(strip_markers(value))
    return raw


class Node:
    """One turn of a conversation (the root: its head)."""

    __slots__ = ("children", "cost", "digest", "extra", "key", "last", "parent", "root_key", "size", "stored")

    def __init__(self, key: bytes, parent: Node | None, digest: bytes, size: int) -> None:
        self.key = key  # the turn's canonical bytes (b"" for a root, or when not kept)
        self.parent = parent
        self.digest = digest  # SHA-256 chained over the head and the turns up to this one, markers left out
        self.size = size  # bytes of this turn without markers
        self.children: dict[bytes, Node] | None = None
        self.last: Node | None = None  # the child the latest walk went on to: tried before any encoding
        self.extra: Any = None  # a consumer's result for this turn (caching/doctor.py keeps its segment here)
        self.cost = 0
        self.stored = False
        self.root_key: tuple[Any, ...] | None = None


class Turns(NamedTuple):
    """The nodes of one request: its head and one per turn, in order."""

    root: Node
    nodes: tuple[Node, ...]


def _members(info: RequestInfo) -> Mapping[str, bytes] | None:
    """The canonical encoding of each top-level member of the body, made anyway to forward it."""
    if info.canonical is None:
        encoded_body(info)
    # Canonical keeps them per member so a change re-encodes one member.
    return info.canonical.members if info.canonical is not None else None


def _ends(data: bytes, at: int) -> bool:
    return data[at : at + 1] in _AFTER


def _root_digest(info: RequestInfo, name: str) -> bytes:
    head = {k: v for k, v in info.body.items() if k != name and k not in FREE_KEYS}
    raw = unmarked(head)
    # Each part ends with a NUL; the length prefix keeps the head and the turns apart ("ab"+"c" vs "a"+"bc").
    parts = f"{info.protocol}\0{info.route}\0{info.model}\0{name}\0".encode("utf-8", "surrogatepass")
    return hashlib.sha256(b"".join((parts, _LENGTH(len(raw)), raw))).digest()


_OPENINGS = {"messages": b'"messages":[', "input": b'"input":['}


def _opening(name: str) -> bytes:
    return _OPENINGS.get(name) or _CANONICAL.encode(name).encode() + b":["


def _key_at(turn: Any, listed: bytes, pos: int) -> tuple[bytes, bool]:
    """``turn``'s bytes as they stand in the canonical member at ``pos`` (b"" when they do not), and
    whether they are ``dumps(turn)``. Canonical spells with orjson, or with the stdlib when orjson
    cannot write the body (or in a tree that predates it): try both, keep the one that is there."""
    try:
        fast = dumps(turn)
    except UnicodeEncodeError:  # a lone surrogate: Canonical could not have encoded it either
        return b"", False
    if listed.startswith(fast, pos) and _ends(listed, pos + len(fast)):
        return fast, True
    std = _CANONICAL.encode(turn).encode()
    if std != fast and listed.startswith(std, pos) and _ends(listed, pos + len(std)):
        return std, False
    return b"", False


def _detached(parent: Node, turns: list[Any]) -> list[Node]:
    """Nodes for ``turns`` after ``parent``, for this request only (``_turn_node``, inlined: the
    path of every short request)."""
    out = []
    digest, sha256, marker = parent.digest, hashlib.sha256, _MARKER
    for turn in turns:
        raw = dumps(turn)
        if marker in raw:
            raw = dumps(strip_markers(turn))
        size = len(raw)
        digest = sha256(b"".join((digest, _LENGTH(size), raw))).digest()
        parent = Node(b"", parent, digest, size)
        out.append(parent)
    return out


def _turn_node(parent: Node, turn: Any, key: bytes, dumped: bool = False) -> Node:
    """A node for ``turn`` after ``parent``; ``dumped``: ``key`` is ``dumps(turn)``, not encoded again."""
    raw = key if dumped and _MARKER not in key else unmarked(turn)
    # SHA-256 runs on the CPU's SHA extensions where present: twice blake2b's speed here.
    digest = hashlib.sha256(b"".join((parent.digest, _LENGTH(len(raw)), raw))).digest()
    return Node(key, parent, digest, len(raw))


class History:
    """The trie of recent conversations, shared by every request of the process (thread-safe)."""

    def __init__(
        self, max_bytes: int = MAX_BYTES, max_path_bytes: int = MAX_PATH_BYTES, min_bytes: int = MIN_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_path_bytes = min(max_path_bytes, max_bytes)
        self.min_bytes = min_bytes
        self.bytes = 0  # estimated, of every node kept (tests/test_history.py holds it to tracemalloc)
        self.nodes = 0
        self._roots: dict[tuple[Any, ...], Node] = {}
        # Where walks ended, least recent first. Every leaf is one; a node that has
        # since been walked past stays listed and is skipped when its turn comes.
        self._walked: OrderedDict[Node, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.nodes

    def walk(self, info: RequestInfo, name: str, turns: list[Any]) -> Turns:
        """The nodes of ``info``'s head and of each of ``turns`` (its ``name`` member), new ones created."""
        if info.prompt_bytes < self.min_bytes:
            return _detached_turns(info, name, turns)  # the whole body is short: so is its turn list
        members = _members(info)
        listed = members.get(name) if members is not None else None
        opening = _opening(name)
        if members is None or listed is None or len(listed) < self.min_bytes or not listed.startswith(opening):
            # Short (most API calls): computing it costs less than looking it up, and nothing is kept.
            return _detached_turns(info, name, turns)
        root_key = (info.protocol, info.route, info.model, name,
                    tuple(m for k, m in members.items() if k != name and k not in FREE_KEYS))
        with self._lock:
            root = self._roots.get(root_key)
            if root is None:
                if NODE_BYTES + sum(map(len, root_key[4])) > self.max_path_bytes:
                    return _detached_turns(info, name, turns)
                root = Node(b"", None, _root_digest(info, name), 0)
                root.root_key = root_key
                self._roots[root_key] = root
                self._keep(root, sum(map(len, root_key[4])))
            nodes: list[Node] = []
            append = nodes.append
            node, pos, capped = root, len(opening), False
            spent = -1  # bytes kept for this path, summed when its first new turn needs them
            for i, turn in enumerate(turns):
                # The turn the previous request of this conversation had here: one memcmp, no encoding.
                child = node.last
                if child is not None:
                    end = pos + len(child.key)
                    # A key is a whole JSON value: matched at pos, it ends before the member's last byte.
                    if listed.startswith(child.key, pos) and listed[end] in b",]":
                        append(child)
                        pos, node = end + 1, child
                        continue
                key, dumped = _key_at(turn, listed, pos)
                if not key:
                    break  # the member is not this turn list (the body changed without its encoding)
                child = node.children.get(key) if node.children is not None else None
                if child is None:
                    child = _turn_node(node, turn, key, dumped)
                    # Kept as a slice of the member: orjson's own bytes hold a buffer larger than their length.
                    child.key = listed[pos : pos + len(key)]
                    if spent < 0:
                        spent = root.cost + sum(map(_COST, nodes))
                    spent += NODE_BYTES + len(key)
                    if spent > self.max_path_bytes:
                        # Past the conversation's share: computed for this request, not kept.
                        nodes.append(child)
                        nodes.extend(_detached(child, turns[i + 1 :]))
                        capped = True
                        break
                    self._adopt(node, child)
                node.last = child
                append(child)
                pos, node = pos + len(key) + 1, child
            # Every leaf is listed: where this walk ended, or the last node it kept before it stopped.
            last = node if node.stored else next((n for n in reversed(nodes) if n.stored), root)
            self._walked[last] = None
            self._walked.move_to_end(last)
            self._evict()
            complete = pos == len(listed) if turns else len(listed) == len(opening) + 1
            if len(nodes) != len(turns) or not (capped or complete):
                return _detached_turns(info, name, turns)
        return Turns(root, tuple(nodes))

    def attach(self, turns: Turns, results: list[tuple[Node, Any, int]]) -> None:
        """Keep consumers' results on nodes of ``turns``: (node, result, estimated bytes).

        A result that would take the conversation past its share is used by
        this request only."""
        with self._lock:
            spent = turns.root.cost + sum(map(_COST, turns.nodes))  # 0 for a node never kept
            for node, extra, nbytes in results:
                if not node.stored:
                    node.extra = extra  # this request's own node
                elif node.extra is None and spent + nbytes <= self.max_path_bytes:
                    node.extra = extra
                    node.cost += nbytes
                    self.bytes += nbytes
                    spent += nbytes
            self._evict()

    def clear(self) -> None:
        with self._lock:
            for root in list(self._roots.values()):
                self._drop(root)
            self._walked.clear()

    # -- under the lock ---------------------------------------------------------

    def _keep(self, node: Node, nbytes: int) -> None:
        node.stored = True
        node.cost = NODE_BYTES + nbytes
        self.bytes += node.cost
        self.nodes += 1

    def _adopt(self, parent: Node, child: Node) -> None:
        sibling = parent.last
        if sibling is not None and sibling.digest == child.digest:
            # The same turn with its cache marker moved: the old variant will not be sent again.
            self._drop(sibling)
        if parent.children is None:
            parent.children = {}
        parent.children[child.key] = child
        self._walked.pop(parent, None)  # no longer a leaf: its recency is its descendants'
        self._keep(child, len(child.key))

    def _drop(self, node: Node) -> None:
        """Forget ``node`` and everything after it."""
        stack = [node]
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
            self._forget(n)

    def _forget(self, node: Node) -> None:
        if not node.stored:
            return
        node.stored = False
        self.bytes -= node.cost
        self.nodes -= 1
        self._walked.pop(node, None)
        parent = node.parent
        if parent is not None:
            if parent.children is not None and parent.children.get(node.key) is node:
                del parent.children[node.key]
            if parent.last is node:
                parent.last = None
        elif node.root_key is not None and self._roots.get(node.root_key) is node:
            del self._roots[node.root_key]

    def _evict(self) -> None:
        """Forget the least recently walked paths, from their ends back to where a newer path branches off."""
        walked = self._walked
        while self.bytes > self.max_bytes and walked:
            oldest, _ = walked.popitem(last=False)
            node: Node | None = oldest
            # A node with children was walked past since: its recency is theirs.
            while node is not None and node.stored and not node.children and node not in walked:
                parent = node.parent
                self._forget(node)
                node = parent


def _detached_turns(info: RequestInfo, name: str, turns: list[Any]) -> Turns:
    """Everything computed for this request only: there is no canonical encoding to match against."""
    root = Node(b"", None, _root_digest(info, name), 0)
    return Turns(root, tuple(_detached(root, turns)))


HISTORY = History()
