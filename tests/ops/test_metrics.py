"""RequestMetrics without a server: rows in, Prometheus families out."""

from __future__ import annotations

import timeit
from decimal import Decimal

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.ledger.conftest import make_row
from tokenfuse.ops.metrics import OTHER_MODEL, RequestMetrics, refusal_reason


class _Reg:
    def __init__(self, m: RequestMetrics) -> None:
        self.m = m

    def collect(self):  # type: ignore[no-untyped-def]
        return self.m.collect()


def scrape(m: RequestMetrics) -> dict[str, list]:  # type: ignore[type-arg]
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Reg(m))  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def test_costs_sum_exactly_and_per_series() -> None:
    m = RequestMetrics()
    costs = [Decimal("0.000000075"), Decimal("0.1"), Decimal("0.2"), Decimal("1.23456789012")]
    for i, c in enumerate(costs):
        m.observe(make_row(i, cost_usd=c, session=f"s{i}"))
    assert m.cost_total() == sum(costs)
    fams = scrape(m)
    (cost,) = [s for s in fams["tokenfuse_cost_usd"] if s.name == "tokenfuse_cost_usd_total"]
    assert cost.value == float(sum(costs))
    assert set(cost.labels) == {"protocol", "route", "model", "key", "principal", "workflow"}
    (req,) = [s for s in fams["tokenfuse_requests"] if s.name == "tokenfuse_requests_total"]
    assert req.value == 4 and req.labels["outcome"] == "ok"
    tokens = {s.labels["class"]: s.value for s in fams["tokenfuse_tokens"] if s.name == "tokenfuse_tokens_total"}
    assert tokens == {"input_uncached": 40, "cache_read": 80, "cache_write": 12, "cache_write_1h": 16, "output": 20}


def test_no_session_label_and_model_cardinality_is_capped() -> None:
    m = RequestMetrics(max_models=3)
    for i in range(10):
        m.observe(make_row(i, model=f"made-up-{i}", session=f"s{i}"))
    fams = scrape(m)
    models = {s.labels["model"] for s in fams["tokenfuse_requests"] if s.name == "tokenfuse_requests_total"}
    assert models == {"made-up-0", "made-up-1", "made-up-2", OTHER_MODEL}
    assert all("session" not in s.labels for samples in fams.values() for s in samples)


def test_refusals_have_bounded_reasons() -> None:
    assert refusal_reason("refused", "budget team-daily") == "budget"
    assert refusal_reason("refused", "session_cap session:alice/x") == "session_cap"
    assert refusal_reason("refused", "model 'zz' has no known price, so ...") == "unpriced_model"
    assert refusal_reason("refused", "guard loop") == "guard"
    assert refusal_reason("refused", "something new") == "other"
    assert refusal_reason("killed", "kill switch principal=bob") == "kill_switch"
    assert refusal_reason("unauthorized", "anything") == "unauthorized"
    m = RequestMetrics()
    m.observe(make_row(0, outcome="refused", reason="budget b1", upstream=None, cost_usd=Decimal(0)))
    m.observe(make_row(1, outcome="refused", reason="budget b2", upstream=None, cost_usd=Decimal(0)))
    m.observe(make_row(2, outcome="upstream_error", reason="upstream status 500"))
    refusals = [s for s in scrape(m)["tokenfuse_refusals"] if s.name == "tokenfuse_refusals_total"]
    assert [(s.labels["reason"], s.value) for s in refusals] == [("budget", 2)]


def test_latency_histograms() -> None:
    m = RequestMetrics()
    m.observe(make_row(0, latency_ms=800.0, overhead_ms=0.3))
    m.observe(make_row(1, latency_ms=0.4, overhead_ms=0.4, upstream=None, outcome="refused", reason="budget x"))
    fams = scrape(m)

    def count(name: str) -> float:
        return sum(s.value for s in fams[name] if s.name == f"{name}_count")

    assert count("tokenfuse_request_duration_seconds") == 2
    assert count("tokenfuse_overhead_duration_seconds") == 2
    assert count("tokenfuse_upstream_duration_seconds") == 1
    assert count("tokenfuse_request_cost_usd") == 1
    up = {s.labels["le"]: s.value for s in fams["tokenfuse_upstream_duration_seconds"] if s.name.endswith("_bucket")}
    assert up["0.5"] == 0 and up["1.0"] == 1 and up["+Inf"] == 1


def test_observe_is_cheap() -> None:
    # Reported, not asserted (no timing assertions in tests): see docs/operations.md.
    m = RequestMetrics()
    row = make_row(0)
    per_call = min(timeit.repeat(lambda: m.observe(row), number=20_000, repeat=3)) / 20_000
    print(f"observe(): {per_call * 1e6:.2f} µs per call")
