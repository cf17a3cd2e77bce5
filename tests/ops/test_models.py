"""The model list without a server."""

from __future__ import annotations

import pytest

from tokenfuse.ops.models import BadQuery, Listed, anthropic_page, available, catalog_providers, openai_list

CATALOG = {"gpt-4o": "openai", "claude-x": "anthropic", "nova": "bedrock", "gpt-mini": "openai"}


def test_available_filters_by_protocol_and_routing() -> None:
    def everything(protocol: str, model: str) -> bool:
        return True

    got = available("openai", ["house-model"], everything, CATALOG)
    assert got == [Listed("gpt-4o", "openai"), Listed("gpt-mini", "openai"), Listed("house-model", "tokenfuse")]
    only_4o = available("openai", ["house-model"], lambda p, m: m.startswith("gpt-4o"), CATALOG)
    assert [x.id for x in only_4o] == ["gpt-4o"]
    assert [x.id for x in available("anthropic", [], everything, CATALOG)] == ["claude-x"]


def test_bundled_catalog_has_providers() -> None:
    providers = set(catalog_providers().values())
    assert {"openai", "anthropic", "bedrock"} <= providers


def test_openai_shape() -> None:
    body = openai_list([Listed("a", "openai")])
    assert body == {"object": "list", "data": [{"id": "a", "object": "model", "created": 0, "owned_by": "openai"}]}


def test_anthropic_pages() -> None:
    models = [Listed(f"m{i}", "anthropic") for i in range(5)]
    first = anthropic_page(models, "limit=2")
    assert [d["id"] for d in first["data"]] == ["m0", "m1"] and first["has_more"] and first["last_id"] == "m1"
    second = anthropic_page(models, "limit=2&after_id=m1")
    assert [d["id"] for d in second["data"]] == ["m2", "m3"] and second["has_more"]
    last = anthropic_page(models, "limit=2&after_id=m3")
    assert [d["id"] for d in last["data"]] == ["m4"] and not last["has_more"]
    back = anthropic_page(models, "limit=2&before_id=m2")
    assert [d["id"] for d in back["data"]] == ["m0", "m1"] and not back["has_more"]
    assert anthropic_page([], "")["data"] == [] and anthropic_page([], "")["first_id"] is None
    for bad in ("limit=0", "limit=x", "limit=1001"):
        with pytest.raises(BadQuery):
            anthropic_page(models, bad)
