"""The guard add-on surface: what a guard sees of a request, what it reports,
and the container the gateway calls.

Guards are pure logic over numbers the gateway already has (context, usage,
cost, price) plus a cheap fingerprint of the prompt; they never do I/O. A
finding goes to a sink (in the gateway: the alert sender, which logs it and
posts it to the webhooks), at most once per guard and subject per hour.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from tokenfuse.config import GuardsConfig
from tokenfuse.limits.context import RequestContext
from tokenfuse.pricing import Price
from tokenfuse.protocols.base import RequestInfo
from tokenfuse.usage import Usage

if TYPE_CHECKING:
    from tokenfuse.caching.verify import AutoCache

log = logging.getLogger("tokenfuse.guards")
K = TypeVar("K")
V = TypeVar("V")

DEDUPE_WINDOW_S = 3600
# Keys whose values sit before the conversation in every provider's cache order.
_HEAD_KEYS = ("system", "instructions", "tools", "toolConfig")
_MAX_HEAD_ITEMS = 4
_SKIP_ROUTES = frozenset({"embeddings", "count_tokens"})


@dataclass(frozen=True, slots=True)
class Finding:
    guard: str
    severity: str  # "warning" | "critical"
    subject: str  # "session S" or "key K, model M"
    message: str  # for humans; shows the math
    data: dict[str, Any]  # money as decimal strings

    def payload(self, now: float) -> dict[str, Any]:
        return {
            "event": "guard_finding",
            "text": f"tokenfuse {self.guard} guard: {self.message}",
            "guard": self.guard,
            "severity": self.severity,
            "subject": self.subject,
            **self.data,
            "ts": datetime.fromtimestamp(now, UTC).isoformat(),
        }


class Prompt:
    """A request's prompt as guards see it: a hash of the whole body, a
    fingerprint of its head (what precedes the conversation plus its first
    item: one conversation, one head) and its conversation items.

    Cache markers are left out of fingerprints: clients move them every turn.
    Everything is computed on first use, so a guard that needs only the body
    hash costs one ``hash(bytes)``.
    """

    __slots__ = ("_body", "_head", "_head_items", "_items", "_raw", "info")

    def __init__(self, body: dict[str, Any], raw: bytes, info: RequestInfo | None = None) -> None:
        self._body = body
        self._raw = raw
        self.info = info  # the parsed request, for guards that need its route (cache doctor)
        self._head: int | None = None
        self._head_items: list[Any] = []  # the head's items, frozen: item() reuses them
        self._items: list[Any] | None = None

    @property
    def body_hash(self) -> int:
        return hash(self._raw)  # bytes cache their hash: free after the first call

    @property
    def items(self) -> list[Any]:
        if self._items is None:
            items = self._body.get("messages")
            if items is None:
                items = self._body.get("input")  # OpenAI Responses
            self._items = items if isinstance(items, list) else ([] if items is None else [items])
        return self._items

    @property
    def head(self) -> int:
        if self._head is None:
            items = self.items
            body = self._body
            parts = [_frozen_bare(body.get(k)) for k in _HEAD_KEYS]
            # OpenAI puts the system prompt in the list: the head runs to the first other item.
            for item in items[:_MAX_HEAD_ITEMS]:
                parts.append(_frozen_bare(item))
                if not (isinstance(item, dict) and item.get("role") in ("system", "developer")):
                    break
            self._head_items = parts[len(_HEAD_KEYS) :]
            self._head = hash(tuple(parts))
        return self._head

    def item(self, index: int) -> int:
        if 0 <= index < len(self._head_items):
            return hash(self._head_items[index])
        return hash(_frozen_bare(self.items[index]))


# Fingerprints are hash() of nested tuples: a few times cheaper than serialising, and in-process
# only. A dict becomes the tuple of its (key, value) pairs, a list the tuple of its values.


def _frozen(value: Any) -> Any:
    cls = value.__class__
    if cls is str or cls is int:
        return value
    if cls is dict or (cls is not list and isinstance(value, dict)):
        return tuple([(k, v if v.__class__ is str else _frozen(v)) for k, v in value.items()])
    if cls is list or isinstance(value, list):
        return tuple([v if v.__class__ is str else _frozen(v) for v in value])
    return value


def _frozen_bare(value: Any) -> Any:
    """``value`` frozen without its cache markers, two levels deep (where clients put them): its
    own ``cache_control``, and in its list (or its ``content`` list) each element's ``cache_control``
    and every ``cachePoint`` element. Frozen and stripped in one pass, without copying dicts."""
    if isinstance(value, list):
        return tuple([_frozen_block(v) for v in value if not _is_cache_point(v)])
    if isinstance(value, dict):
        return tuple([
            (k, tuple([_frozen_block(b) for b in v if not _is_cache_point(b)])
             if k == "content" and isinstance(v, list) else _frozen(v))
            for k, v in value.items() if k != "cache_control"
        ])
    return value


def _frozen_block(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple([(k, _frozen(v)) for k, v in value.items() if k != "cache_control"])
    return _frozen(value)


def _is_cache_point(value: Any) -> bool:
    return isinstance(value, dict) and "cachePoint" in value


def conversation_key(ctx: RequestContext, prompt: Prompt) -> tuple[str, str, str, int]:
    """One agent conversation: interleaved conversations of one key stay apart."""
    return (ctx.key_name, ctx.session or "", ctx.model, prompt.head)


def subject_of(ctx: RequestContext, *, model: bool = True) -> str:
    if ctx.session:
        return (
            f"session {ctx.session} (key {ctx.key_name}, model {ctx.model})"
            if model
            else f"session {ctx.session}"
        )
    return f"key {ctx.key_name}, model {ctx.model}" if model else f"key {ctx.key_name}"


class Guard(Protocol):
    name: str

    def observe(
        self,
        ctx: RequestContext,
        prompt: Prompt,
        usage: Usage,
        cost: Decimal,
        price: Price | None,
        now: float,
    ) -> Finding | None:
        """After an ok request settled. Pure: no I/O, O(1) amortised."""
        ...

    def check(self, ctx: RequestContext, prompt: Prompt, now: float) -> Finding | None:
        """Before a request is admitted: a finding here refuses it."""
        ...


class Tracks(Generic[K, V]):
    """A dict that forgets its least recently used entries beyond ``limit``."""

    __slots__ = ("_data", "_limit")

    def __init__(self, limit: int) -> None:
        self._data: OrderedDict[K, V] = OrderedDict()
        self._limit = limit

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        if len(self._data) > self._limit:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Guards:
    """Every enabled guard behind two calls: :meth:`check` and :meth:`observe`."""

    def __init__(
        self,
        config: GuardsConfig,
        sink: Callable[[Finding], None] | None = None,
        *,
        guards: list[Guard] | None = None,
        keep_recent: int = 50,
        caching: AutoCache | None = None,
    ) -> None:
        self.config = config
        self.guards: list[Guard] = _build(config, caching) if guards is None else guards
        self.checkers = [g for g in self.guards if _refuses(g)]
        self.sink = sink or _log_finding
        self._sent: Tracks[tuple[str, str], int] = Tracks(config.max_tracked)
        self._recent: deque[dict[str, Any]] = deque(maxlen=keep_recent)

    @property
    def enabled(self) -> bool:
        return bool(self.guards)

    def check(
        self, ctx: RequestContext, info: RequestInfo, body: bytes, now: float | None = None
    ) -> str | None:
        """A refusal message, or None to admit."""
        if not self.checkers or info.route in _SKIP_ROUTES:
            return None
        ts = time.time() if now is None else now
        prompt = Prompt(info.body, body)
        for guard in self.checkers:
            finding = guard.check(ctx, prompt, ts)
            if finding is not None:
                self._emit(finding, ts)
                return finding.message
        return None

    def observe(
        self,
        ctx: RequestContext,
        info: RequestInfo,
        body: bytes,
        usage: Usage,
        cost: Decimal,
        price: Price | None,
        now: float | None = None,
    ) -> list[Finding]:
        """Feed one ok request to every guard; returns the findings not suppressed."""
        if not self.guards or info.route in _SKIP_ROUTES or usage.estimated:
            return []
        ts = time.time() if now is None else now
        prompt = Prompt(info.body, body, info)
        out: list[Finding] = []
        for guard in self.guards:
            try:
                finding = guard.observe(ctx, prompt, usage, cost, price, ts)
            except Exception:  # a guard's bug must never cost a ledger row
                log.exception("guard %s failed; request metered normally", guard.name)
                continue
            if finding is not None and self._emit(finding, ts):
                out.append(finding)
        return out

    def recent(self) -> list[dict[str, Any]]:
        """The latest findings' payloads, newest last."""
        return list(self._recent)

    def _emit(self, finding: Finding, now: float) -> bool:
        bucket = int(now // DEDUPE_WINDOW_S)
        key = (finding.guard, finding.subject)
        if self._sent.get(key) == bucket:
            return False
        self._sent.put(key, bucket)
        self._recent.append(finding.payload(now))
        try:
            self.sink(finding)
        except Exception:
            log.exception("guard finding could not be queued: %s", finding.message)
        return True


def _refuses(guard: Guard) -> bool:
    return bool(getattr(guard, "refuses", False))


def _log_finding(finding: Finding) -> None:
    log.warning(json.dumps(finding.payload(time.time()), separators=(",", ":")))


def _build(config: GuardsConfig, caching: AutoCache | None = None) -> list[Guard]:
    if not config.enabled:
        return []
    from tokenfuse.caching.verify import AutoCache
    from tokenfuse.config import CachingConfig
    from tokenfuse.guards.cache_doctor import CacheDoctorGuard
    from tokenfuse.guards.cache_miss import CacheMissGuard
    from tokenfuse.guards.context_growth import ContextGrowthGuard
    from tokenfuse.guards.loop import LoopGuard

    out: list[Guard] = []
    if config.cache_miss.enabled:
        out.append(CacheMissGuard(config.cache_miss, config.max_tracked))
    if config.context_growth.enabled:
        out.append(ContextGrowthGuard(config.context_growth, config.max_tracked))
    if config.loop.enabled:
        out.append(LoopGuard(config.loop, config.max_tracked))
    if config.cache_doctor.enabled:
        cache = caching or AutoCache(CachingConfig.model_validate({}), min_requests=config.cache_doctor.min_requests)
        out.append(CacheDoctorGuard(cache))
    return out


def usd(value: Decimal) -> str:
    """Dollars for a message: cents when exact, else up to 6 significant decimals."""
    cents = value.quantize(Decimal("0.01"))
    if cents == value:
        return f"${cents:,f}"
    return f"${value.quantize(Decimal('0.000001')).normalize():,f}"


def rate(value: Decimal) -> str:
    """A per-million rate: $3.00/M, $0.30/M."""
    return f"{usd(value)}/M"
