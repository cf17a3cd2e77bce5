"""Item 8: runaway, caching health and budget advice on Azure OpenAI, Vertex AI / Gemini and
marketplace-sold models in FOCUS exports, from rows shaped like each provider's exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenfuse.billing.detect import detect
from tokenfuse.billing.load import load
from tokenfuse.billing.sample import generate
from tokenfuse.billing.usagetypes import classify

INCIDENTS = ["runaway", "cache_miss", "cache_miss_marketplace", "noisy_batch", "compute_spike", "missing_days"]


@pytest.mark.parametrize(
    ("service", "meter", "cls", "model"),
    [
        # Azure OpenAI / Foundry Models meter names (Azure retail prices API, cost exports)
        ("Azure OpenAI", "gpt-4o-0806-Inp-glbl Tokens", "input_uncached", "gpt4o0806"),
        ("Azure OpenAI", "gpt 4o 0806 cached Inp glbl Tokens", "cache_read", "gpt4o0806"),
        ("Azure OpenAI", "gpt-4o-0806-Outp-glbl Tokens", "output", "gpt4o0806"),
        ("Azure OpenAI", "gpt 4o 0513 Input global Tokens", "input_uncached", "gpt4o0513"),
        ("Azure OpenAI", "gpt 4o 0513 Output global Tokens", "output", "gpt4o0513"),
        ("Foundry Models", "GPT 5 Inpt Glbl", "input_uncached", "gpt5"),
        ("Foundry Models", "gpt 4.5 0227 cached Inp regnl", "cache_read", "gpt4.50227"),
        ("Foundry Models", "gpt-4-8K-Batch-Inp-glbl Tokens", "input_uncached", "gpt48k"),
        # Vertex AI SKU descriptions
        ("Vertex AI", "Gemini 2.5 Pro Input Tokens", "input_uncached", "gemini2.5pro"),
        ("Vertex AI", "Gemini 2.5 Pro Cached Input Tokens", "cache_read", "gemini2.5pro"),
        ("Vertex AI", "Gemini 2.5 Pro Output Tokens", "output", "gemini2.5pro"),
        ("Vertex AI", "Gemini 2.5 Flash Text Output", "output", "gemini2.5flash"),
        # Anthropic models sold through a cloud marketplace: a service named after the model
        ("Claude Sonnet 4.5", "Claude Sonnet 4.5 Cache Read Input Tokens", "cache_read", "claude-sonnet-4.5"),
        ("Claude Sonnet 4.5", "Claude Sonnet 4.5 Cache Write Input Tokens", "cache_write", "claude-sonnet-4.5"),
        ("Claude Sonnet 4.5", "Claude Sonnet 4.5 Output Tokens", "output", "claude-sonnet-4.5"),
    ],
)
def test_cloud_meters_map_to_token_classes(service: str, meter: str, cls: str, model: str) -> None:
    k = classify(service.lower(), meter, None, service)
    assert (k.kind, k.token_class, k.model) == ("inference", cls, model)


@pytest.mark.parametrize(
    ("service", "meter"),
    [
        ("Vertex AI", "Gemini 2.5 Pro Context Cache Storage"),  # storage, not tokens
        ("Storage", "Hot LRS Data Stored"),
        ("Virtual Machines", "D4s v5"),
        ("Cognitive Services", "S1 Speech To Text"),
    ],
)
def test_non_token_cloud_meters_are_not_inference(service: str, meter: str) -> None:
    assert classify(service.lower(), meter, None, service).kind != "inference"


@pytest.mark.parametrize("provider", ["azure", "gcp", "mixed"])
@pytest.mark.parametrize("flavour", ["focus-1.0", "focus-1.2"])
def test_detection_on_provider_shaped_focus_exports(tmp_path: Path, provider: str, flavour: str) -> None:
    m = generate(str(tmp_path / "export.csv"), flavour, accounts=10, incidents=INCIDENTS, provider=provider)
    det = detect(load([str(tmp_path / "export.csv")]))
    assert det.nothing_to_analyse is None
    flagged = {r.account for r in det.flagged}
    assert flagged == {a for a, want in m.expect_runaway().items() if want}
    misses = {c.account for c in det.cache_misses}
    by_incident = {inc: a for a, inc in m.accounts.items()}
    assert {by_incident["cache_miss"], by_incident["cache_miss_marketplace"]} <= misses
    # Budget advice for every account with inference spend, the runaway's days left out.
    budgets = {b.account: b for b in det.budgets}
    assert set(budgets) == set(m.accounts)
    assert budgets[by_incident["runaway"]].excluded_days


def test_hand_written_azure_and_gcp_rows(tmp_path: Path) -> None:
    """Azure FOCUS 1.0 names its meter only in x_SkuMeterName; Google Cloud's FOCUS 1.0 view
    only in ChargeDescription. Both are read, and a cache-read meter counts as caching support."""
    rows = []
    for d in range(1, 31):
        day = f"2026-09-{d:02d}"
        for meter, qty, cost in (("gpt-4o-0806-Inp-glbl Tokens", 900_000, "2.25"),
                                 ("gpt 4o 0806 cached Inp glbl Tokens", 10_000, "0.0125"),
                                 ("gpt-4o-0806-Outp-glbl Tokens", 10_000, "0.10")):
            rows.append(f"{day}T00:00:00Z,{cost},/subscriptions/abc,Microsoft,Azure OpenAI,Usage,{qty / 1000},1K Tokens,"
                        f"USD,{meter},Azure OpenAI usage")
        for desc, qty, cost in (("Gemini 2.5 Pro Input Tokens", 2_000_000, "2.50"),
                                ("Gemini 2.5 Pro Output Tokens", 100_000, "1.00")):
            rows.append(f"{day}T00:00:00Z,{cost},my-project,Google Cloud,Vertex AI,Usage,{qty},count,USD,,{desc}")
    path = tmp_path / "focus10.csv"
    path.write_text(
        "ChargePeriodStart,BilledCost,SubAccountId,ProviderName,ServiceName,ChargeCategory,PricingQuantity,"
        "PricingUnit,BillingCurrency,x_SkuMeterName,ChargeDescription\n" + "\n".join(rows) + "\n"
    )
    exp = load([str(path)])
    det = detect(exp)
    stats = {(c.account, c.model): c for c in det.cache}
    az = stats[("/subscriptions/abc", "gpt4o0806")]
    assert az.tokens["input_uncached"] == 900_000 * 30 and az.tokens["cache_read"] == 10_000 * 30
    assert az.supports_caching
    gem = stats[("my-project", "gemini2.5pro")]
    assert gem.tokens["input_uncached"] == 2_000_000 * 30 and gem.supports_caching
    assert {c.account for c in det.cache_misses} == {"/subscriptions/abc", "my-project"}
