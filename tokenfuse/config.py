"""The one validated configuration model, loaded from YAML.

``${VAR}`` and ``${VAR:-default}`` are substituted from the environment before
parsing. Every error names the file, the key path and how to fix it, and is
raised as :class:`ConfigError` so the CLI can print one line and exit.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

TOKEN_LIMIT_CLASSES = ("input_uncached", "cache_read", "cache_write", "output", "total")
CALENDAR_WINDOWS = ("minute", "hour", "day", "week", "month", "total")
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_REPORTED_ERRORS = 50
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user."""


def parse_duration(text: str) -> int:
    """``"90s"``, ``"15m"``, ``"1h"``, ``"30d"``, ``"2w"`` -> seconds."""
    m = _DURATION.match(str(text))
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r} is not a duration; write a positive number and a unit, e.g. 90s, 15m, 1h, 30d, 2w")
    return int(m.group(1)) * _DURATION_SECONDS[m.group(2)]


def _decimal(value: Any, what: str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number, not a boolean")
    try:
        # str() first: Decimal(0.1) would carry the float's binary error.
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise ValueError(f"{what} must be a number (e.g. 12.50), got {value!r}") from None
    if not d.is_finite() or d < 0:
        raise ValueError(f"{what} must be a finite, non-negative number, got {value!r}")
    return d


def _money(value: Any) -> Decimal:
    return _decimal(value, "an amount of USD")


def _duration(value: str) -> str:
    parse_duration(value)
    return value


# Money is parsed from str(value) so YAML floats never carry binary error;
# durations are validated once here and parsed where they are used.
Money = Annotated[Decimal, BeforeValidator(_money)]
Duration = Annotated[str, AfterValidator(_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TLSConfig(_Model):
    cert: str
    key: str


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    tls: TLSConfig | None = None
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0)
    admin_token: str | None = None
    metrics_public: bool = False  # GET /metrics without the admin token (docs/operations.md)
    upstream_timeout_s: float = Field(600.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Limits on what a client can make the gateway hold (tokenfuse/gateway/server_limits.py).
    header_timeout_s: float = Field(10.0, gt=0)
    body_timeout_s: float = Field(30.0, gt=0)
    keep_alive_timeout_s: float = Field(15.0, gt=0)
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    max_connections: int | None = Field(None, ge=1)  # None: half the open-file limit, at most 10,000
    max_connections_per_client: int | None = Field(256, ge=1)  # None: no per-address cap
    shutdown_timeout_s: float = Field(10.0, gt=0)
    # Status of OpenAI-protocol budget refusals: auto = 400 for clients that retry
    # or hide a 429 (Vercel AI SDK, Codex CLI), 429 insufficient_quota otherwise.
    openai_refusal_status: Literal["auto", 400, 429] = "auto"
    # Worker processes behind one port (SO_REUSEPORT), each with its own ledger
    # writer and admission journal; more than 1 needs shared (Redis) counters.
    workers: int = Field(1, ge=1, le=256)


class UpstreamConfig(_Model):
    name: str
    protocol: Literal["openai", "anthropic", "bedrock"]
    base_url: str
    api_key: str | None = None
    # bedrock: sigv4 (botocore signer, credentials from the fields below or the
    # default AWS chain), api_key (Bedrock API key as a bearer token), none.
    auth: Literal["none", "sigv4", "api_key", "bearer", "x-api-key"] | None = None
    region: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_session_token: str | None = None
    models: list[str] | None = None  # globs; first upstream whose globs match wins
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _auth(self) -> UpstreamConfig:
        if self.auth is None:
            default = {"openai": "bearer", "anthropic": "x-api-key", "bedrock": "sigv4"}[self.protocol]
            object.__setattr__(self, "auth", default)
        if self.protocol == "bedrock" and not self.region:
            raise ValueError("a bedrock upstream needs `region` (e.g. region: us-east-1)")
        return self


class SessionCaps(_Model):
    max_requests: int | None = Field(None, gt=0)
    max_usd: Money | None = None
    idle_expiry: Duration = "1h"

    @property
    def idle_expiry_s(self) -> int:
        return parse_duration(self.idle_expiry)


class SessionsConfig(SessionCaps):
    # Per-workflow overrides; a key's own `sessions:` wins over both.
    workflows: dict[str, SessionCaps] = Field(default_factory=dict)


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


def _label(value: str, what: str) -> str:
    # Teams and tags are grouped on and stored comma-joined in the ledger, so no
    # commas or spaces.
    if not _LABEL.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} must be 1-128 letters, digits or ._:@/- (no spaces or commas), e.g. platform-team"
        )
    return value


def _team(value: str | None) -> str | None:
    return None if value is None else _label(value, "team")


def _tags(value: list[str]) -> list[str]:
    return sorted({_label(t, "tag") for t in value})


class KeyConfig(_Model):
    name: str
    key: str | None = None
    key_sha256: str | None = None
    principal: str
    workflow: str = "default"
    team: Annotated[str | None, AfterValidator(_team)] = None
    tags: Annotated[list[str], AfterValidator(_tags)] = Field(default_factory=list)
    # After this instant (UTC) the key is refused; run-time keys carry it from `tokenfuse keys create --expires`.
    expires: datetime | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: str | None = None
    aws_region: str | None = None  # SigV4 scope region this key must sign for; unset: sigv4.region, else any
    sessions: SessionCaps | None = None
    lower_max_tokens: bool | None = None  # unset: defaults.lower_max_tokens

    @field_validator("expires", mode="before")
    @classmethod
    def _expires(cls, v: Any) -> Any:
        # YAML reads `expires: 2026-01-31` as a date: take it as that day's start, UTC.
        if isinstance(v, date) and not isinstance(v, datetime):
            return datetime(v.year, v.month, v.day, tzinfo=UTC)
        return v

    @field_validator("expires")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    @model_validator(mode="after")
    def _one_secret(self) -> KeyConfig:
        if not self.key and not self.key_sha256 and not self.aws_access_key_id:
            raise ValueError(
                "a key needs `key` (e.g. key: ${TF_KEY_ALICE}), `key_sha256` (hex SHA-256 of the key) "
                "or an aws_access_key_id/aws_secret_access_key pair; if `key` is an unset ${VAR}, export it"
            )
        if self.key_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", self.key_sha256):
            raise ValueError("key_sha256 must be 64 hex characters (sha256sum of the key)")
        if bool(self.aws_access_key_id) != bool(self.aws_secret_access_key):
            raise ValueError(
                "aws_access_key_id and aws_secret_access_key go together; set both or neither "
                "(if the secret is an unset ${VAR}, export it)"
            )
        return self

    def digest(self) -> str | None:
        if self.key_sha256:
            return self.key_sha256.lower()
        if self.key:
            return hashlib.sha256(self.key.encode()).hexdigest()
        return None


class PriceOverride(_Model):
    input: Money
    output: Money
    cache_read: Money | None = None
    cache_write: Money | None = None
    cache_write_1h: Money | None = None


class PricingConfig(_Model):
    file: str | None = None  # LiteLLM-format model_prices_and_context_window.json
    allow_unpriced: bool = False
    # Server-held context (previous_response_id, stored prompts) and server-side
    # tools bill beyond any bound the gateway can compute before sending; refused
    # unless allowed, in which case their spend is only metered afterwards.
    allow_unbounded: bool = False
    # Options billed above the standard rate that the catalog does not price
    # (priority tiers, latency-optimised inference, guardrails): refused unless allowed.
    allow_priced_options: bool = False


def _one_or_many(value: Any) -> Any:
    # `principal: [alice, bob]` matches either; an empty list would match nothing, which is never meant.
    if isinstance(value, list):
        if not value:
            raise ValueError("an empty list matches nothing; leave the field out to match everything")
        if len(value) == 1:
            return value[0]
    return value


OneOrMany = Annotated[str | list[str] | None, BeforeValidator(_one_or_many)]
_Protocol = Literal["openai", "anthropic", "bedrock"]


class BudgetMatch(_Model):
    # Every field takes one value or a list (any of them); a budget matches when every field given matches.
    key: OneOrMany = None
    principal: OneOrMany = None
    workflow: OneOrMany = None
    session: OneOrMany = None
    model: OneOrMany = None  # glob(s)
    protocol: Annotated[_Protocol | list[_Protocol] | None, BeforeValidator(_one_or_many)] = None
    team: OneOrMany = None
    tags: OneOrMany = None  # the key carries at least one of these tags

    def values(self, field: str) -> tuple[str, ...] | None:
        """The field's values as a tuple, or None when the field is not set."""
        v = getattr(self, field)
        if v is None:
            return None
        return tuple(v) if isinstance(v, list) else (v,)


class BudgetLimit(_Model):
    usd: Money | None = None
    requests: int | None = Field(None, gt=0)
    tokens: dict[str, int] | None = None

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for k, n in (v or {}).items():
            if k not in TOKEN_LIMIT_CLASSES:
                raise ValueError(f"unknown token class {k!r}; use one of {', '.join(TOKEN_LIMIT_CLASSES)}")
            if n <= 0:
                raise ValueError(f"tokens.{k} must be a positive integer")
        return v

    @model_validator(mode="after")
    def _some(self) -> BudgetLimit:
        if self.usd is None and self.requests is None and not self.tokens:
            raise ValueError("a limit needs at least one of usd, requests or tokens (e.g. limit: {usd: 200})")
        return self


class RollingWindow(_Model):
    rolling: Duration


class BudgetConfig(_Model):
    name: str
    match: BudgetMatch = Field(default_factory=BudgetMatch)
    window: Literal["minute", "hour", "day", "week", "month", "total"] | RollingWindow = "month"
    limit: BudgetLimit

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: Any) -> Any:
        # Accept "rolling: 1h" written as a string too.
        if isinstance(v, str) and v.startswith("rolling"):
            return {"rolling": v.split(":", 1)[-1].strip() if ":" in v else v[len("rolling") :].strip()}
        return v

    @property
    def rolling_seconds(self) -> int | None:
        return parse_duration(self.window.rolling) if isinstance(self.window, RollingWindow) else None


class DefaultsConfig(_Model):
    max_tokens: int = Field(4096, gt=0)
    max_tokens_cap: int = Field(32000, gt=0)
    on_cap: Literal["clamp", "refuse"] = "clamp"
    # Fit to budget (docs/limits.md): lower a request's output limit to what the
    # budget's headroom can hold, never below min_output_tokens.
    lower_max_tokens: bool = True
    min_output_tokens: int = Field(1024, gt=0)


class WebhookConfig(_Model):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)


class AlertsConfig(_Model):
    thresholds: list[float] = Field(default_factory=lambda: [0.2, 0.5, 0.75, 1.0])
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    rate_check: bool = True  # warn when the last hour's rate would exhaust a budget before its window ends

    @field_validator("webhooks", mode="before")
    @classmethod
    def _urls(cls, v: Any) -> Any:
        return [{"url": w} if isinstance(w, str) else w for w in (v or [])]

    @field_validator("thresholds")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        for t in v:
            if not 0 < t <= 1:
                raise ValueError(f"threshold {t} must be a fraction in (0, 1], e.g. 0.75 for 75%")
        return sorted(v)


class CacheMissGuardConfig(_Model):
    enabled: bool = True
    min_requests: int = Field(3, gt=0)  # consecutive requests re-sending an uncached prefix
    min_prefix_tokens: int = Field(1024, ge=0)  # below this providers do not cache a prefix at all
    min_usd: Money = Decimal("0.50")


class ContextGrowthGuardConfig(_Model):
    enabled: bool = True
    min_requests: int = Field(8, ge=3)
    project_steps: int = Field(10, gt=0)
    min_projected_usd: Money = Decimal("1.00")


class LoopGuardConfig(_Model):
    enabled: bool = True
    repeats: int = Field(3, ge=2)
    window: Duration = "10m"
    action: Literal["alert", "refuse"] = "alert"

    @property
    def window_s(self) -> int:
        return parse_duration(self.window)


class CacheDoctorGuardConfig(_Model):
    enabled: bool = True
    min_requests: int = Field(2, gt=0)  # consecutive turns with the same cause before it is reported


class GuardsConfig(_Model):
    enabled: bool = True
    max_tracked: int = Field(10_000, gt=0)  # sessions/conversations each guard remembers (LRU)
    cache_miss: CacheMissGuardConfig = Field(default_factory=CacheMissGuardConfig)  # type: ignore[arg-type]
    context_growth: ContextGrowthGuardConfig = Field(default_factory=ContextGrowthGuardConfig)  # type: ignore[arg-type]
    loop: LoopGuardConfig = Field(default_factory=LoopGuardConfig)  # type: ignore[arg-type]
    cache_doctor: CacheDoctorGuardConfig = Field(default_factory=CacheDoctorGuardConfig)  # type: ignore[arg-type]


class CachingScope(_Model):
    """Where automatic prompt caching is on: every field given must match (docs/caching.md)."""

    workflow: str | None = None
    key: str | None = None
    model: str | None = None  # glob


class CachingConfig(_Model):
    # Scopes where the gateway places cache breakpoints in unmarked requests; empty: nowhere.
    auto: list[CachingScope] = Field(default_factory=list)
    one_hour_after: Duration = "4m"  # a gap between a conversation's turns above this picks 1-hour writes
    max_gap: Duration = "1h"  # a gap above this stops injecting: writes would expire unread
    max_tracked: int = Field(10_000, gt=0)  # conversations remembered (LRU)


class RoutingMatch(_Model):
    # Like a budget's match: each field one value or a list (any of them); every field given must match.
    key: OneOrMany = None
    principal: OneOrMany = None
    workflow: OneOrMany = None
    team: OneOrMany = None
    tags: OneOrMany = None  # the key carries at least one of these tags
    protocol: Annotated[_Protocol | list[_Protocol] | None, BeforeValidator(_one_or_many)] = None

    def values(self, field: str) -> tuple[str, ...] | None:
        v = getattr(self, field)
        if v is None:
            return None
        return tuple(v) if isinstance(v, list) else (v,)


class RoutingWhen(_Model):
    """When a rule routes: a budget at or above a percentage, request headers, or both (docs/routing.md)."""

    budget: str | None = None
    above_pct: float | None = Field(None, gt=0, le=100)
    header: dict[str, OneOrMany] | None = None

    @field_validator("header")
    @classmethod
    def _headers(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("an empty header map matches everything; leave `header` out or name a header")
        for name, want in v.items():
            if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if want is None:
                raise ValueError(f"header {name!r} needs a value to match, e.g. {name}: light")
        # Header names arrive lower-cased.
        return {name.lower(): want for name, want in v.items()}

    @model_validator(mode="after")
    def _some(self) -> RoutingWhen:
        if (self.budget is None) != (self.above_pct is None):
            raise ValueError("`budget` and `above_pct` go together, e.g. when: {budget: team-monthly, above_pct: 80}")
        if self.budget is None and self.header is None:
            raise ValueError(
                "`when` needs a budget condition ({budget: NAME, above_pct: 80}) or a header condition "
                "({header: {x-step: light}}); leave `when` out to route every matching request"
            )
        return self


class RoutingRule(_Model):
    """Send matching requests for model `from` (a glob) to model `to` of the same protocol (docs/routing.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    match: RoutingMatch = Field(default_factory=RoutingMatch)
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    when: RoutingWhen | None = None  # unset: every matching request is routed


class SigV4Config(_Model):
    # How Bedrock callers' SigV4 signatures are verified (docs/gateway.md, Authentication).
    region: str | None = None  # scope region every SigV4 caller must sign for; unset: any, recorded
    allow_unsigned_payload: bool = False  # accept `UNSIGNED-PAYLOAD` (over TLS only)
    # Signatures remembered for the 15-min window to refuse exact replays; 0 (default): off,
    # because boto3 does not sign its per-call invocation id: identical calls in one second share a signature.
    replay_cache_size: int = Field(0, ge=0)


class LedgerConfig(_Model):
    batch_interval_ms: int = Field(200, gt=0)
    batch_size: int = Field(1000, gt=0)
    # Admission journal folder (docs/ledger.md); default: beside an SQLite ledger,
    # or $XDG_STATE_HOME/tokenfuse/journal/<store> for PostgreSQL.
    journal_dir: str | None = None


class Config(_Model):
    server: ServerConfig = Field(default_factory=ServerConfig)  # type: ignore[arg-type]
    store: str = "sqlite:///tokenfuse.db"
    counters: str = "memory"
    on_counter_failure: Literal["closed", "open"] = "closed"
    # How many replicas share the Redis counters: with on_counter_failure: open, each
    # may admit during an outage at most 1/counters_replicas of the last headroom it saw.
    counters_replicas: int = Field(1, ge=1)
    reservation_ttl_s: int = Field(900, gt=0)
    # A request that would fit once in-flight reservations settle waits this long
    # for them instead of being refused; an exhausted budget still refuses at once.
    admission_wait_ms: int = Field(2000, ge=0)
    kill_poll_ms: int = Field(250, gt=0)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    keys: list[KeyConfig] = Field(default_factory=list)
    prices: dict[str, PriceOverride] = Field(default_factory=dict)
    pricing: PricingConfig = Field(default_factory=PricingConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)  # type: ignore[arg-type]
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)  # type: ignore[arg-type]
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)  # type: ignore[arg-type]
    guards: GuardsConfig = Field(default_factory=GuardsConfig)  # type: ignore[arg-type]
    caching: CachingConfig = Field(default_factory=CachingConfig)  # type: ignore[arg-type]
    # Budget-aware model routing, opt-in (docs/routing.md); empty: requests are served as asked.
    routing: list[RoutingRule] = Field(default_factory=list)
    sigv4: SigV4Config = Field(default_factory=SigV4Config)  # type: ignore[arg-type]
    # Where the file was loaded from, for messages; not a YAML key.
    source: Annotated[str, Field(exclude=True)] = "<config>"

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("store must be sqlite:///path.db or postgresql://user@host:5432/db")
        return v

    @field_validator("counters")
    @classmethod
    def _counters(cls, v: str) -> str:
        if v != "memory" and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("counters must be `memory` or a redis URL such as redis://127.0.0.1:6379/0")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        problems = cross_problems(self.model_dump(mode="json"))
        if problems:
            raise ValueError("; ".join(f"{where}: {msg}" for where, msg in problems))
        return self

    def session_caps(self, key: KeyConfig | None, workflow: str) -> SessionCaps:
        if key is not None and key.sessions is not None:
            return key.sessions
        return self.sessions.workflows.get(workflow, self.sessions)


def _entries(data: dict[str, Any], section: str) -> list[tuple[int, dict[str, Any]]]:
    items = data.get(section)
    if not isinstance(items, list):
        return []
    return [(i, x) for i, x in enumerate(items) if isinstance(x, dict)]


def _where(section: str, i: int, entry: dict[str, Any]) -> str:
    name = entry.get("name")
    return f"{section}[{i}]" + (f" (name: {name})" if isinstance(name, str) and name else "")


def _key_digest(entry: dict[str, Any]) -> str | None:
    digest, secret = entry.get("key_sha256"), entry.get("key")
    if isinstance(digest, str) and digest:
        return digest.lower()
    if isinstance(secret, str) and secret:
        return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()
    return None


def cross_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Problems between entries (duplicate names and secrets, inconsistent
    defaults), all of them, as (key path, message).

    Works on the raw mapping, so they are reported in the same pass as every
    per-field error rather than only once those are fixed.
    """
    problems: list[tuple[str, str]] = []

    def unique(section: str, what: str, value_of: Any, message: str) -> None:
        seen: dict[Any, str] = {}
        for i, entry in _entries(data, section):
            value = value_of(entry)
            if value is None or (isinstance(value, str) and not value):
                continue
            if value in seen:
                problems.append((_where(section, i, entry), message.format(value=value, first=seen[value])))
            else:
                seen[value] = _where(section, i, entry)

    def name_of(entry: dict[str, Any]) -> str | None:
        name = entry.get("name")
        return name if isinstance(name, str) else None

    unique("upstreams", "name", name_of, "two upstreams are named {value!r} (also {first}); names must be unique")
    unique("keys", "name", name_of, "two keys are named {value!r} (also {first}); names must be unique")
    unique("keys", "secret", _key_digest, "has the same secret as {first}; give each key its own")
    unique(
        "keys",
        "aws_access_key_id",
        lambda e: e.get("aws_access_key_id") if isinstance(e.get("aws_access_key_id"), str) else None,
        "reuses aws_access_key_id {value} (also {first}); give each key its own",
    )
    unique("budgets", "name", name_of, "two budgets are named {value!r} (also {first}); names must be unique")
    unique("routing", "name", name_of, "two routing rules are named {value!r} (also {first}); names must be unique")
    budget_names = {n for _, e in _entries(data, "budgets") if isinstance(n := e.get("name"), str)}
    for i, entry in _entries(data, "routing"):
        when = entry.get("when")
        wanted = when.get("budget") if isinstance(when, dict) else None
        if isinstance(wanted, str) and wanted not in budget_names:
            problems.append((
                f"{_where('routing', i, entry)}.when.budget",
                f"no budget is named {wanted!r}; name one under `budgets:`"
                + (f" ({', '.join(sorted(budget_names))})" if budget_names else ""),
            ))
    server, counters = data.get("server"), data.get("counters", "memory")
    workers = server.get("workers", 1) if isinstance(server, dict) else 1
    if isinstance(workers, int) and workers > 1 and counters == "memory":
        problems.append((
            "server.workers",
            f"{workers} worker processes cannot share memory counters: each would enforce every budget on "
            "its own, admitting up to workers x the cap. Set `counters:` to a Redis URL (e.g. "
            "redis://127.0.0.1:6379/0) or use server.workers: 1",
        ))
    defaults = data.get("defaults")
    if isinstance(defaults, dict):
        mt, cap = defaults.get("max_tokens", 4096), defaults.get("max_tokens_cap", 32000)
        if isinstance(mt, int) and isinstance(cap, int) and mt > cap:
            problems.append(("defaults.max_tokens", f"{mt} must not exceed defaults.max_tokens_cap ({cap})"))
    return problems


def substitute_env(text: str, env: dict[str, str] | None = None) -> str:
    environ = os.environ if env is None else env

    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = environ.get(name)
        if value is None or (value == "" and default is not None):
            return default if default is not None else ""
        return value

    return _ENV_REF.sub(repl, text)


def _path(loc: tuple[Any, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        # pydantic puts union-branch and validator names in loc; keep only real keys.
        if isinstance(item, int):
            label = ""
            if isinstance(node, list) and 0 <= item < len(node) and isinstance(node[item], dict):
                nm = node[item].get("name")
                label = f" (name: {nm})" if nm else ""
            parts.append(f"[{item}]{label}")
            node = node[item] if isinstance(node, list) and 0 <= item < len(node) else None
        elif isinstance(node, dict) and item in node:
            parts.append(f".{item}" if parts else str(item))
            node = node[item]
        elif not isinstance(item, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", item):
            continue  # a union branch or validator tag, not a key the user wrote
        elif isinstance(node, dict) or node is None:
            # A missing key, named by pydantic.
            parts.append(f".{item}" if parts else str(item))
            node = None
    return "".join(parts) or "(top level)"


def _drop_unusable_keys(data: dict[str, Any]) -> None:
    # Read-only commands (usage, status, kill, export, ...) need the store, not
    # the callers' secrets: a key whose ${VAR} is unset in this shell is skipped.
    keys = data.get("keys")
    if isinstance(keys, list):
        kept = []
        for k in keys:
            try:
                KeyConfig.model_validate(k)
            except ValidationError:
                continue
            kept.append(k)
        data["keys"] = kept


def parse_config(
    text: str, source: str = "<config>", env: dict[str, str] | None = None, *, secrets: bool = True
) -> Config:
    try:
        data = yaml.safe_load(substitute_env(text, env))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (server:, upstreams:, keys:, ...)")
    if not secrets:
        _drop_unusable_keys(data)
    try:
        cfg = Config.model_validate({**data, "source": source})
    except ValidationError as exc:
        # Every problem in one pass: per-field errors, then those between entries.
        lines = []
        for err in exc.errors():
            if not err["loc"]:
                continue  # the whole-config check; cross_problems below says it item by item
            where = _path(tuple(err["loc"]), data)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key; check its spelling against docs/configuration.md"
            elif err["type"] == "missing":
                msg = "required key is missing"
            lines.append(f"{source}: {where}: {msg}")
        lines += [f"{source}: {where}: {msg}" for where, msg in cross_problems(data)]
        if len(lines) > MAX_REPORTED_ERRORS:
            more = len(lines) - MAX_REPORTED_ERRORS
            lines = [*lines[:MAX_REPORTED_ERRORS], f"{source}: ... and {more} more"]
        raise ConfigError("\n".join(lines)) from None
    return cfg


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None, *, secrets: bool = True) -> Config:
    """Load and validate; ``secrets=False`` skips keys whose secrets are not set
    (for commands that never authenticate a caller)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file; pass --config path/to/tokenfuse.yaml") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text; save the config as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(p), env, secrets=secrets)
