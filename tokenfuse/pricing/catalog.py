"""The price book: bundled catalog, LiteLLM file and config overrides, and model-id resolution.

Precedence is by layer: a config override beats the LiteLLM file, which beats
the bundled catalog. Within a layer the candidates from `names.candidates` are
tried most specific first, so an exact entry always beats a reduced name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any, ClassVar

from tokenfuse.pricing.lru import LRU
from tokenfuse.pricing.names import MAX_MODEL_NAME, candidates, reduce_name
from tokenfuse.pricing.price import PRICE_FIELDS, Price, UnpricedModel

LAYER_CONFIG = "config"
LAYER_LITELLM = "litellm"
LAYER_CATALOG = "catalog"

# Entries in each per-book cache (prices by requested string, identities by
# requested string). Keys are at most MAX_MODEL_NAME characters, so each cache
# holds at most ~1 MB of names however many distinct ones clients send.
CACHE_SIZE = 4096
# Appended to the identity of a name longer than MAX_MODEL_NAME.
TRUNCATED = "…(truncated)"


@dataclass(frozen=True, slots=True)
class Entry:
    price: Price
    source: str
    geo_premium: Decimal | None = None  # extra fraction for regional Bedrock profiles


@dataclass(frozen=True, slots=True)
class Layer:
    name: str
    entries: Mapping[str, Entry]
    aliases: Mapping[str, str]

    def find(self, name: str) -> str | None:
        if name in self.entries:
            return name
        target = self.aliases.get(name)
        return target if target is not None and target in self.entries else None


@dataclass(frozen=True, slots=True)
class Resolution:
    """How a requested model string was priced, for `tokenfuse prices MODEL`."""

    requested: str
    price: Price
    matched: str  # the catalog / file / config key that matched
    layer: str
    source: str
    steps: tuple[str, ...]
    geo: str | None
    premium: Decimal | None  # the regional premium applied, as a fraction (0.10 = +10%)


class PriceBook:
    _default: ClassVar[PriceBook | None] = None

    def __init__(self, layers: Iterable[Layer]) -> None:
        self._layers = tuple(layers)
        self._premiums = self._collect_premiums()
        self._cache: LRU[str, Price | None] = LRU(CACHE_SIZE)
        self._identities: LRU[str, str] = LRU(CACHE_SIZE)
        # Identity comes from the bundled catalog only, never from config
        # overrides or a LiteLLM file, so every process agrees on it.
        self._identity_layers = tuple(layer for layer in self._layers if layer.name == LAYER_CATALOG)
        self._reduced_keys: dict[str, str] | None = None

    @classmethod
    def default(cls) -> PriceBook:
        """The bundled catalog alone; parsed once per process."""
        if cls._default is None:
            cls._default = cls([bundled_layer()])
        return cls._default

    @classmethod
    def build(
        cls,
        overrides: Mapping[str, Mapping[str, object]] | None = None,
        litellm_file: str | None = None,
    ) -> PriceBook:
        layers: list[Layer] = []
        if overrides:
            layers.append(Layer(LAYER_CONFIG, parse_overrides(overrides), {}))
        if litellm_file:
            from tokenfuse.pricing.litellm import load_litellm

            loaded = load_litellm(litellm_file)
            entries = {name: Entry(price, f"LiteLLM file {litellm_file}") for name, price in loaded.items()}
            layers.append(Layer(LAYER_LITELLM, entries, {}))
        layers.append(bundled_layer())
        return cls(layers)

    # -- lookups -------------------------------------------------------------

    def lookup(self, model: str) -> Price | None:
        """The price for a requested model string; None when nothing prices it or it is too long."""
        try:
            return self._cache[model]
        except KeyError:
            pass
        if len(model) > MAX_MODEL_NAME:
            return None
        resolution = self.resolve(model)
        price = None if resolution is None else resolution.price
        self._cache.put(model, price)
        return price

    def canonical(self, model: str) -> str:
        """The one identity of a requested model string (see `tokenfuse.pricing.identity`)."""
        try:
            return self._identities[model]
        except KeyError:
            pass
        stripped = model.strip()
        if len(stripped) > MAX_MODEL_NAME:
            # Never priced and never cached. Cut short so no table keyed by the
            # identity (glob caches, ledger rows) holds what the client sent;
            # the marker keeps it distinct from every real (shorter) id.
            return stripped[:MAX_MODEL_NAME].lower() + TRUNCATED
        ident = self._identify(stripped)
        if len(model) <= MAX_MODEL_NAME:
            self._identities.put(model, ident)
        return ident

    def _identify(self, model: str) -> str:
        chain = candidates(model)
        for layer in self._identity_layers:
            for cand in chain:
                key = layer.find(cand.name)
                if key is not None:
                    return key
        reduced = reduce_name(model)
        return self._by_reduced_name().get(reduced, reduced)

    def _by_reduced_name(self) -> dict[str, str]:
        # A name pricing cannot resolve (``amazon.nova-pro`` without its
        # ``-v1:0``) still names a catalog model when it reduces like one does.
        if self._reduced_keys is None:
            table: dict[str, str] = {}
            for layer in self._identity_layers:
                for key in layer.entries:
                    table.setdefault(key, key)
            for layer in self._identity_layers:
                for name in (*layer.entries, *layer.aliases):
                    key_ = layer.find(name)
                    if key_ is not None:
                        table.setdefault(reduce_name(name), key_)
            self._reduced_keys = table
        return self._reduced_keys

    def require(self, model: str) -> Price:
        price = self.lookup(model)
        if price is None:
            raise UnpricedModel(model, tuple(self.suggest(model)))
        return price

    def resolve(self, model: str) -> Resolution | None:
        if len(model) > MAX_MODEL_NAME:
            return None
        chain = candidates(model)
        for layer in self._layers:
            for cand in chain:
                key = layer.find(cand.name)
                if key is None:
                    continue
                entry = layer.entries[key]
                premium = self._premium_for(key, cand.geo)
                price = entry.price if premium is None else entry.price.scaled(1 + premium)
                steps = cand.steps if key == cand.name else (*cand.steps, f"alias of {key!r}")
                return Resolution(model, price, key, layer.name, entry.source, steps, cand.geo, premium)
        return None

    def suggest(self, model: str, limit: int = 3) -> list[str]:
        names = {n for layer in self._layers for n in (*layer.entries, *layer.aliases)}
        target = candidates(model)[-1].name if model.strip() else model
        return difflib.get_close_matches(target, sorted(names), n=limit, cutoff=0.5)

    def entries(self) -> list[tuple[str, Price, str, str]]:
        """Every priced id once, as (id, price, layer, source); higher layers shadow lower ones."""
        seen: dict[str, tuple[str, Price, str, str]] = {}
        for layer in self._layers:
            for name, entry in layer.entries.items():
                seen.setdefault(name, (name, entry.price, layer.name, entry.source))
        return sorted(seen.values(), key=lambda row: row[0])

    # -- internals -----------------------------------------------------------

    def _collect_premiums(self) -> dict[str, Decimal]:
        premiums: dict[str, Decimal] = {}
        for layer in self._layers:
            for name, entry in layer.entries.items():
                if entry.geo_premium is not None:
                    premiums.setdefault(name, entry.geo_premium)
            for alias, target in layer.aliases.items():
                entry_ = layer.entries.get(target)
                if entry_ is not None and entry_.geo_premium is not None:
                    premiums.setdefault(alias, entry_.geo_premium)
        return premiums

    def _premium_for(self, key: str, geo: str | None) -> Decimal | None:
        # Global profiles are the base price; a geography-pinned profile of a
        # model AWS charges a regional premium for costs that much more.
        if geo is None or geo == "global":
            return None
        return self._premiums.get(key)


# -- parsing -----------------------------------------------------------------


def to_price(value: object, where: str, field: str) -> Decimal:
    """A USD-per-million figure from YAML/JSON; floats go through str(), never Decimal(float)."""
    fix = f"give USD per million tokens as a plain number, e.g. `{field}: 1.25`"
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"{where}.{field}: {value!r} is not a price; {fix}")
    try:
        number = Decimal(str(value).strip()) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"{where}.{field}: {value!r} is not a number; {fix}") from None
    if not number.is_finite():
        raise ValueError(f"{where}.{field}: {value!r} is not a finite number; {fix}")
    if number < 0:
        raise ValueError(f"{where}.{field}: {value!r} is negative; prices cannot be below zero")
    return number


def price_from_fields(model: str, fields: Mapping[str, object], where: str) -> Price:
    unknown = sorted(set(fields) - set(PRICE_FIELDS))
    if unknown:
        raise ValueError(
            f"{where}.{unknown[0]}: unknown price field; use {', '.join(PRICE_FIELDS)} (USD per million tokens)"
        )
    for required in ("input", "output"):
        if fields.get(required) is None:
            raise ValueError(
                f"{where}: `{required}` is missing; every priced model needs input and output "
                f"(USD per million tokens), e.g. {{input: 1.00, output: 10.00}}"
            )

    def opt(field: str) -> Decimal | None:
        value = fields.get(field)
        return None if value is None else to_price(value, where, field)

    return Price(
        model=model,
        input=to_price(fields["input"], where, "input"),
        output=to_price(fields["output"], where, "output"),
        cache_read=opt("cache_read"),
        cache_write=opt("cache_write"),
        cache_write_1h=opt("cache_write_1h"),
    )


def _as_mapping(value: object) -> Mapping[str, object] | None:
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)  # the config's pydantic PriceOverride
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return dumped
    return None


def parse_overrides(overrides: Mapping[str, object]) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    for model, fields in overrides.items():
        where = f"prices.{model}"
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"prices: {model!r} is not a model name; use the model id as the key")
        mapping = _as_mapping(fields)
        if mapping is None:
            raise ValueError(
                f"{where}: expected a mapping of prices, e.g. {{input: 1.00, output: 10.00}}, got {fields!r}"
            )
        entries[model] = Entry(price_from_fields(model, mapping, where), "config `prices:`")
    return entries


def bundled_layer() -> Layer:
    global _BUNDLED
    if _BUNDLED is None:
        text = (
            resources.files("tokenfuse.pricing").joinpath("data", "catalog.json").read_text(encoding="utf-8")
        )
        _BUNDLED = parse_catalog(json.loads(text), "tokenfuse/pricing/data/catalog.json")
    return _BUNDLED


_BUNDLED: Layer | None = None


def parse_catalog(doc: Any, where: str) -> Layer:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ValueError(f"{where}: expected an object with a `models` object")
    entries: dict[str, Entry] = {}
    aliases: dict[str, str] = {}
    for model, spec in doc["models"].items():
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: models.{model} must be an object")
        path = f"{where}: models.{model}"
        price = price_from_fields(model, {k: spec.get(k) for k in PRICE_FIELDS}, path)
        if (tier := spec.get("long_context")) is not None:
            price = _with_long_context(price, tier, path)
        premium = spec.get("bedrock_geo_premium")
        source = spec.get("source")
        if not isinstance(source, str) or not source:
            raise ValueError(f"{path}: every catalog entry needs a `source` note")
        entries[model] = Entry(
            price, source, None if premium is None else to_price(premium, path, "bedrock_geo_premium")
        )
        for alias in spec.get("aliases", []):
            if alias in aliases or alias in doc["models"]:
                raise ValueError(f"{path}: alias {alias!r} is already taken")
            aliases[alias] = model
    return Layer(LAYER_CATALOG, entries, aliases)


def _with_long_context(price: Price, tier: Any, path: str) -> Price:
    where = f"{path}.long_context"
    if not isinstance(tier, dict):
        raise ValueError(f"{where}: expected an object with above_input_tokens and the five rates")
    threshold = tier.get("above_input_tokens")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
        raise ValueError(f"{where}.above_input_tokens: expected a positive whole number of tokens")
    long = price_from_fields(price.model, {k: tier.get(k) for k in PRICE_FIELDS}, where)
    return dataclasses.replace(price, long_context_threshold=threshold, long_context=long)
