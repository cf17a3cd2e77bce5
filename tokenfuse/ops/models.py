"""``GET /v1/models``: the models a caller can use, in OpenAI's or Anthropic's shape.

A model is listed for a protocol when the gateway can price it and an upstream
of that protocol routes it: every model under ``prices:`` in the config, and
every bundled catalog model whose provider is that protocol. The caller's
protocol is Anthropic's when the request carries ``anthropic-version`` (as the
Anthropic SDK always does), else OpenAI's. Keys are not bound to upstreams, so
every valid key sees the same list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

OWNER = "tokenfuse"
# Anthropic's page size default and cap (its API reference for GET /v1/models).
ANTHROPIC_DEFAULT_LIMIT = 20
ANTHROPIC_MAX_LIMIT = 1000
_EPOCH = "1970-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class Listed:
    id: str
    owned_by: str  # the catalog's provider, or "tokenfuse" for a config price


@cache
def catalog_providers() -> dict[str, str]:
    """Bundled catalog model id -> provider (``openai``, ``anthropic``, ``bedrock``)."""
    text = resources.files("tokenfuse.pricing").joinpath("data", "catalog.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    return {name: str(spec.get("provider", "")) for name, spec in doc["models"].items()}


def available(
    protocol: str,
    config_models: list[str],
    routes: Callable[[str, str], bool],
    catalog: Mapping[str, str] | None = None,
) -> list[Listed]:
    """Models callable through ``protocol``, sorted by id; ``routes(protocol, model)``
    says whether an upstream of that protocol takes the model."""
    out: dict[str, Listed] = {}
    for model in config_models:
        if routes(protocol, model):
            out[model] = Listed(model, OWNER)
    for model, provider in (catalog_providers() if catalog is None else catalog).items():
        if provider == protocol and model not in out and routes(protocol, model):
            out[model] = Listed(model, provider)
    return [out[k] for k in sorted(out)]


def openai_list(models: list[Listed]) -> dict[str, Any]:
    # OpenAI's `created` is the model's release time; the gateway does not know it.
    return {
        "object": "list",
        "data": [{"id": m.id, "object": "model", "created": 0, "owned_by": m.owned_by} for m in models],
    }


def openai_model(model: Listed) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.owned_by}


def anthropic_model(model: Listed) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model.id,
        "display_name": model.id,
        "created_at": _EPOCH,
        "lifecycle": "active",
    }


class BadQuery(ValueError):
    pass


def anthropic_page(models: list[Listed], query: str) -> dict[str, Any]:
    """One page of Anthropic's cursor pagination (``limit``, ``after_id``, ``before_id``)."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    try:
        limit = int(params.get("limit", ANTHROPIC_DEFAULT_LIMIT))
    except ValueError:
        raise BadQuery(f"limit must be an integer from 1 to {ANTHROPIC_MAX_LIMIT}") from None
    if not 1 <= limit <= ANTHROPIC_MAX_LIMIT:
        raise BadQuery(f"limit must be an integer from 1 to {ANTHROPIC_MAX_LIMIT}")
    ids = [m.id for m in models]
    start, end = 0, len(models)
    if (after := params.get("after_id")) is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
        end = min(len(ids), start + limit)
    elif (before := params.get("before_id")) is not None:
        end = ids.index(before) if before in ids else 0
        start = max(0, end - limit)
    else:
        end = min(len(ids), limit)
    page = models[start:end]
    has_more = (end < len(ids)) if "before_id" not in params else start > 0
    return {
        "data": [anthropic_model(m) for m in page],
        "has_more": has_more,
        "first_id": page[0].id if page else None,
        "last_id": page[-1].id if page else None,
    }
