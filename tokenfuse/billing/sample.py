"""Synthetic FOCUS 1.0 / FOCUS 1.2 / CUR 2.0 exports with injected incidents.

The day-level plan (account x day x billing line -> dollars and quantity) is
built in Python from a seeded generator, so every number is reproducible; DuckDB
then expands it to hourly rows and writes CSV, gzip CSV or Parquet. That split is
what lets the benchmark produce ten million rows in seconds.

Each account carries at most one detection incident; the ledger incidents
(``unit_error``, ``billing_lag``, ``unmetered``) all land on the *gateway account*
(the first account), the one whose traffic ``ledger_url`` writes to a ledger.
"""

from __future__ import annotations

import csv
import random
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb

from tokenfuse.billing.errors import BillingInputError

DETECT_INCIDENTS: tuple[str, ...] = (
    "runaway",
    "cache_miss",
    "gradual_growth",
    "noisy_batch",
    "compute_spike",
    "tiny_baseline",
    "missing_days",
    "cache_miss_marketplace",
)
LEDGER_INCIDENTS: tuple[str, ...] = ("unit_error", "billing_lag", "unmetered", "unit_error_late", "unit_label")
# unit_error_late: the 1000x error starts this many days before the export's end.
LATE_ERROR_DAYS = 11
INCIDENTS: tuple[str, ...] = DETECT_INCIDENTS + LEDGER_INCIDENTS
# The detector's known answer for each incident account.
EXPECT_RUNAWAY: dict[str, bool] = {
    "healthy": False,
    "runaway": True,
    "cache_miss": False,
    "gradual_growth": False,
    "noisy_batch": False,
    "compute_spike": False,
    "tiny_baseline": False,
    "missing_days": False,
    "cache_miss_marketplace": False,
    "gateway": False,
}

# USD per million tokens by class; synthetic, but in the shape of Bedrock's list.
_PRICES: dict[str, dict[str, Decimal]] = {
    "Claude4.5Sonnet": {
        "input_uncached": Decimal("3"),
        "output": Decimal("15"),
        "cache_read": Decimal("0.3"),
        "cache_write": Decimal("3.75"),
    },
    "Claude4.5Haiku": {
        "input_uncached": Decimal("1"),
        "output": Decimal("5"),
        "cache_read": Decimal("0.1"),
        "cache_write": Decimal("1.25"),
    },
    "NovaPro": {"input_uncached": Decimal("0.8"), "output": Decimal("3.2")},
}
LEDGER_MODEL_IDS: dict[str, str] = {
    "Claude4.5Sonnet": "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
    "Claude4.5Haiku": "us.anthropic.claude-haiku-4-5-20251001-v1:0",
    "NovaPro": "us.amazon.nova-pro-v1:0",
}
_SUFFIX = {
    "input_uncached": "input-tokens",
    "output": "output-tokens",
    "cache_read": "cache-read-input-token-count",
    "cache_write": "cache-write-input-token-count",
}
_MP_SUFFIX = {
    "input_uncached": "InputTokenCount",
    "output": "OutputTokenCount",
    "cache_read": "CacheReadInputTokenCount",
    "cache_write": "CacheWriteInputTokenCount",
}
# Share of a healthy day's inference dollars by class (caching working).
_HEALTHY_MIX = {
    "input_uncached": Decimal("0.25"),
    "cache_read": Decimal("0.10"),
    "cache_write": Decimal("0.15"),
    "output": Decimal("0.50"),
}
_MILLION = Decimal(1_000_000)
_Q = Decimal("0.0000000001")


@dataclass(frozen=True, slots=True)
class PlanLine:
    account: str
    day: date
    service_code: str
    service_name: str
    usage_type: str
    operation: str
    unit: str
    cost: Decimal
    quantity: Decimal
    hourly: bool
    product: str
    cloud: str = "aws"  # aws | azure | gcp: whose FOCUS rows this line is shaped like


@dataclass(slots=True)
class Manifest:
    flavour: str
    days: int
    first_day: date
    last_day: date
    accounts: dict[str, str]  # account id -> incident ("healthy", "gateway", or an incident)
    gateway_account: str
    files: list[str] = field(default_factory=list)
    rows: int = 0
    # day -> model label -> token class -> true tokens, for the gateway account.
    true_tokens: dict[date, dict[str, dict[str, int]]] = field(default_factory=dict)

    def expect_runaway(self) -> dict[str, bool]:
        return {a: EXPECT_RUNAWAY.get(i, False) for a, i in self.accounts.items()}


PROVIDERS: tuple[str, ...] = ("aws", "azure", "gcp", "mixed")


def _account_id(i: int, provider: str = "aws") -> str:
    """An account as each provider's FOCUS SubAccountId spells it: AWS account id, Azure
    subscription resource id, Google Cloud project id. ``mixed`` cycles through the three."""
    cloud = ("aws", "azure", "gcp")[i % 3] if provider == "mixed" else provider
    n = 210987650000 + i * 1117
    if cloud == "azure":
        return f"/subscriptions/{n % 10**8:08x}-5a1e-4c0d-9f00-{n:012d}"
    if cloud == "gcp":
        return f"tf-inference-{n % 10**6:06d}"
    return f"{n:012d}"


def cloud_of(account: str) -> str:
    if account.startswith("/subscriptions/"):
        return "azure"
    return "gcp" if account.startswith("tf-") else "aws"


def _assign(accounts: int, incidents: Sequence[str], provider: str = "aws") -> dict[str, str]:
    for inc in incidents:
        if inc not in INCIDENTS:
            raise BillingInputError(f"--incident {inc!r} is not known; choose from {', '.join(INCIDENTS)}")
    detect = [i for i in dict.fromkeys(incidents) if i in DETECT_INCIDENTS]
    needed = len(detect) + 1
    if accounts < needed:
        raise BillingInputError(f"--accounts {accounts} is too few for {len(detect)} incident(s); use at least {needed}")
    out: dict[str, str] = {_account_id(0, provider): "gateway"}
    for n, inc in enumerate(detect, start=1):
        out[_account_id(n, provider)] = inc
    for n in range(len(detect) + 1, accounts):
        out[_account_id(n, provider)] = "healthy"
    return out


# How Azure OpenAI and Vertex AI name the same workload's models and token meters (see
# docs/detection.md for the public sources). Azure OpenAI and Gemini bill no cache writes.
_CLOUD_MODEL = {
    "azure": {"Claude4.5Sonnet": "gpt-4o-0806", "Claude4.5Haiku": "gpt-4o-mini-0718", "NovaPro": "gpt-4.1-nano-0414"},
    "gcp": {"Claude4.5Sonnet": "Gemini 2.5 Pro", "Claude4.5Haiku": "Gemini 2.5 Flash", "NovaPro": "Gemini 2.0 Flash Lite"},
}


def _azure_meter(model: str, cls: str) -> str | None:
    spaced = model.replace("-", " ")
    return {"input_uncached": f"{model}-Inp-glbl Tokens", "output": f"{model}-Outp-glbl Tokens",
            "cache_read": f"{spaced} cached Inp glbl Tokens"}.get(cls)


def _vertex_sku(model: str, cls: str) -> str | None:
    return {"input_uncached": f"{model} Input Tokens", "output": f"{model} Output Tokens",
            "cache_read": f"{model} Cached Input Tokens"}.get(cls)


def _marketplace_sku(cls: str) -> str:
    name = "Claude Sonnet 4.5"
    return {"input_uncached": f"{name} Input Tokens", "output": f"{name} Output Tokens",
            "cache_read": f"{name} Cache Read Input Tokens", "cache_write": f"{name} Cache Write Input Tokens"}[cls]


def _cloud_token_line(ln: PlanLine, cloud: str, model: str, cls: str, n: int, marketplace: bool) -> PlanLine | None:
    """The Azure / Google Cloud row for the same tokens and dollars as an AWS token line."""
    if marketplace:
        # Claude sold through the cloud's marketplace: a service of its own, named after the model.
        meter: str | None = _marketplace_sku(cls)
        svc = "Claude Sonnet 4.5"
    elif cloud == "azure":
        meter, svc = _azure_meter(_CLOUD_MODEL["azure"][model], cls), "Azure OpenAI"
    else:
        meter, svc = _vertex_sku(_CLOUD_MODEL["gcp"][model], cls), "Vertex AI"
    if meter is None:
        return None
    if cloud == "azure":
        qty, unit = Decimal(n) / 1000, "1K Tokens"
    else:
        qty, unit = Decimal(n), "count"
    return PlanLine(ln.account, ln.day, "", svc, meter, "", unit, ln.cost, qty, ln.hourly, svc, cloud)


_CLOUD_SERVICE = {
    # AWS service code -> (Azure ServiceName, meter), (Google Cloud ServiceName, SKU description)
    "AmazonEC2": (("Virtual Machines", "D4s v5"), ("Compute Engine", "N2 Instance Core running in Americas")),
    "AWSLambda": (("Functions", "Standard Execution Time"), ("Cloud Run Functions", "CPU Time")),
    "AmazonCloudWatch": (("Azure Monitor", "Metrics API Calls"), ("Cloud Monitoring", "Monitoring API Requests")),
    "AmazonS3": (("Storage", "Hot LRS Data Stored"), ("Cloud Storage", "Standard Storage US Multi-region")),
}


def _reshape(ln: PlanLine) -> PlanLine:
    cloud = cloud_of(ln.account)
    if cloud == "aws" or ln.service_code not in _CLOUD_SERVICE:
        return ln
    svc, meter = _CLOUD_SERVICE[ln.service_code][0 if cloud == "azure" else 1]
    return PlanLine(ln.account, ln.day, "", svc, meter, "", ln.unit, ln.cost, ln.quantity, ln.hourly, svc, cloud)


def _token_lines(
    account: str,
    day: date,
    model: str,
    tokens: dict[str, int],
    marketplace: bool = False,
    unit_error: str | None = None,
    unit_label: str | None = None,
) -> list[PlanLine]:
    lines = []
    for cls, n in tokens.items():
        if n <= 0:
            continue
        price = _PRICES[model][cls]
        if unit_label == cls:
            # The provider's other bug: thousands of tokens under a per-token unit label; dollars right.
            cost = (Decimal(n) * price / _MILLION).quantize(_Q)
            ut = f"USE1-{model}-{_SUFFIX[cls]}"
            op = "InvokeModelInference" if cls != "output" else "InvokeModelStreamingInference"
            lines.append(PlanLine(account, day, "AmazonBedrock", "Amazon Bedrock", ut, op, "Tokens", cost,
                                  Decimal(n) / 1000, True, "Amazon Bedrock"))
            continue
        if marketplace:
            ut = f"USW2-MP:USW2_{_MP_SUFFIX[cls]}-Units"
            qty, unit = Decimal(n), "Units"
            product = "Claude Sonnet 4.5 (Amazon Bedrock Edition)"
            svc_code, svc_name = "AWSMarketplace", "Claude Sonnet 4.5 (Amazon Bedrock Edition)"
        else:
            ut = f"USE1-{model}-{_SUFFIX[cls]}"
            qty, unit = Decimal(n) / 1000, "1K tokens"
            product = svc_name = "Amazon Bedrock"
            svc_code = "AmazonBedrock"
        if unit_error == cls:
            # The provider's bug: raw token counts entered as 1K-token units.
            qty = Decimal(n)
        cost = (qty * Decimal(1000 if unit == "1K tokens" else 1) * price / _MILLION).quantize(_Q)
        op = "InvokeModelInference" if cls != "output" else "InvokeModelStreamingInference"
        line = PlanLine(account, day, svc_code, svc_name, ut, op, unit, cost, qty, True, product)
        cloud = cloud_of(account)
        if cloud != "aws":
            shaped = _cloud_token_line(line, cloud, model, cls, n, marketplace)
            if shaped is None:
                continue
            line = shaped
        lines.append(line)
    return lines


def _split(daily_usd: Decimal, model: str, mix: dict[str, Decimal]) -> dict[str, int]:
    return {cls: int(daily_usd * share / _PRICES[model][cls] * _MILLION) for cls, share in mix.items()}


def plan(
    accounts: dict[str, str],
    first_day: date,
    days: int,
    seed: int = 7,
    gateway_incidents: Collection[str] = (),
) -> tuple[list[PlanLine], dict[date, dict[str, dict[str, int]]]]:
    """Day-level lines for every account, and the gateway account's true tokens per day."""
    lines: list[PlanLine] = []
    truth: dict[date, dict[str, dict[str, int]]] = {}
    last = days - 1
    for idx, (acct, incident) in enumerate(accounts.items()):
        rng = random.Random(f"{seed}-{acct}")
        base = Decimal(rng.randint(20, 60))
        compute = Decimal(rng.randint(30, 80))
        for d in range(days):
            day = first_day + timedelta(days=d)
            recent = d >= last - 2
            noise = Decimal(str(round(rng.uniform(0.9, 1.1), 4)))
            usd = base * noise
            comp = compute * Decimal(str(round(rng.uniform(0.97, 1.03), 4)))
            mix = _HEALTHY_MIX
            model = "Claude4.5Sonnet"
            tokens: dict[str, int] | None = None
            if incident == "runaway":
                usd = Decimal(7) * noise
                if recent:
                    extra = Decimal(125) * noise
                    tokens = _split(usd, model, mix)
                    tokens["input_uncached"] += int(extra / _PRICES[model]["input_uncached"] * _MILLION)
            elif incident in ("cache_miss", "cache_miss_marketplace"):
                tokens = {
                    "input_uncached": int(Decimal("6.47e9") / 30 * noise),
                    "cache_read": int(Decimal("1.67e9") / 30 * noise),
                    "cache_write": int(Decimal("0.05e9") / 30 * noise),
                    "output": int(Decimal("0.2e9") / 30 * noise),
                }
            elif incident == "gradual_growth":
                usd = Decimal(30) * Decimal("1.005") ** d * noise
            elif incident == "noisy_batch":
                usd = Decimal(300) if (last - d) % 3 == 1 else Decimal(20)
                usd *= noise
            elif incident == "compute_spike":
                usd = Decimal(25) * noise
                if recent:
                    comp = Decimal(400) * noise
            elif incident == "tiny_baseline":
                usd = Decimal("0.40") * noise
                if recent:
                    usd = Decimal(3) * noise
            elif incident == "missing_days":
                usd = Decimal(30) * noise if (d % 3 != 1 or recent) else Decimal(0)
            if tokens is None:
                tokens = _split(usd, model, mix)
            if incident == "gateway":
                haiku = _split(usd / 2, "Claude4.5Haiku", mix)
                truth[day] = {"Claude4.5Sonnet": dict(tokens), "Claude4.5Haiku": dict(haiku)}
                billed_days = [day]
                if "billing_lag" in gateway_incidents and d in (last - 4, last - 3):
                    billed_days = []  # billed later, in one lump
                if "billing_lag" in gateway_incidents and d == last - 2:
                    # The lump: two missing days billed on this one.
                    for back in (1, 2):
                        prev = truth[day - timedelta(days=back)]
                        for cls in tokens:
                            tokens[cls] += prev["Claude4.5Sonnet"][cls]
                            haiku[cls] += prev["Claude4.5Haiku"][cls]
                if billed_days:
                    lines += _token_lines(acct, day, "Claude4.5Sonnet", tokens)
                    late = "unit_error_late" in gateway_incidents and d > last - LATE_ERROR_DAYS
                    err = "output" if "unit_error" in gateway_incidents or late else None
                    label = "output" if "unit_label" in gateway_incidents else None
                    lines += _token_lines(acct, day, "Claude4.5Haiku", haiku, unit_error=err, unit_label=label)
                if "unmetered" in gateway_incidents:
                    nova = _split(Decimal(4) * noise, "NovaPro", {"input_uncached": Decimal("0.5"), "output": Decimal("0.5")})
                    lines += _token_lines(acct, day, "NovaPro", nova)
            elif usd > 0 or incident in ("cache_miss", "cache_miss_marketplace"):
                mp = (incident == "healthy" and idx % 2 == 1) or incident == "cache_miss_marketplace"
                lines += _token_lines(acct, day, model, tokens, marketplace=mp)
            lines.append(
                PlanLine(acct, day, "AmazonEC2", "Amazon Elastic Compute Cloud", "USE1-BoxUsage:m7i.xlarge",
                         "RunInstances", "Hrs", comp.quantize(_Q), Decimal(24), True, "Amazon Elastic Compute Cloud")
            )
            lam = (Decimal(3) * noise).quantize(_Q)
            lines.append(
                PlanLine(acct, day, "AWSLambda", "AWS Lambda", "USE1-Lambda-GB-Second", "Invoke", "Lambda-GB-Second",
                         lam, (lam / Decimal("0.0000166667")).quantize(Decimal(1)), True, "AWS Lambda")
            )
            lines.append(
                PlanLine(acct, day, "AmazonCloudWatch", "AmazonCloudWatch", "USE1-CW:Requests", "GetMetricData",
                         "Requests", (Decimal(1) * noise).quantize(_Q), Decimal(100000), True, "AmazonCloudWatch")
            )
            lines.append(
                PlanLine(acct, day, "AmazonS3", "Amazon Simple Storage Service", "USE1-TimedStorage-ByteHrs",
                         "StandardStorage", "GB-Mo", (Decimal(2) * noise).quantize(_Q), Decimal(90), False,
                         "Amazon Simple Storage Service")
            )
    return [_reshape(ln) for ln in lines], truth


def _write_plan(lines: Sequence[PlanLine], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["account", "day", "service_code", "service_name", "usage_type", "operation", "unit", "cost",
                    "quantity", "hourly", "product", "cloud"])
        for ln in lines:
            w.writerow([ln.account, ln.day.isoformat(), ln.service_code, ln.service_name, ln.usage_type,
                        ln.operation, ln.unit, ln.cost, ln.quantity, "1" if ln.hourly else "0", ln.product, ln.cloud])


def _columns(flavour: str, parquet: bool) -> str:
    if parquet:
        ts = "ts"
        te = "ts + CASE WHEN hourly THEN INTERVAL 1 HOUR ELSE INTERVAL 1 DAY END"
    elif flavour == "cur-2.0":
        ts = "strftime(ts, '%Y-%m-%dT%H:%M:%SZ')"
        te = "strftime(ts + CASE WHEN hourly THEN INTERVAL 1 HOUR ELSE INTERVAL 1 DAY END, '%Y-%m-%dT%H:%M:%SZ')"
    else:
        ts = "strftime(ts, '%Y-%m-%d %H:%M:%S')"
        te = "strftime(ts + CASE WHEN hourly THEN INTERVAL 1 HOUR ELSE INTERVAL 1 DAY END, '%Y-%m-%d %H:%M:%S')"
    # Case varies between rows in real exports; reproduce it on odd accounts.
    charge = "CASE WHEN hash(account) % 2 = 0 THEN 'Usage' ELSE 'usage' END"
    # CUR 2.0 keeps product attributes in the ``product`` map (Parquet MAP; a JSON object in CSV).
    product_map = (
        "MAP {'product_name': product, 'region': 'us-east-1'}"
        if parquet
        else "to_json(MAP {'product_name': product, 'region': 'us-east-1'})"
    )
    if flavour == "cur-2.0":
        return f"""
            '999999999999' AS bill_payer_account_id,
            account AS line_item_usage_account_id,
            CASE WHEN hash(account) % 2 = 0 THEN 'Usage' ELSE 'usage' END AS line_item_line_item_type,
            {ts} AS line_item_usage_start_date,
            {te} AS line_item_usage_end_date,
            -- A Marketplace product code is an opaque 25-character id (b3hzdk7mhh2vz0ywa7kjh0eyt).
            CASE WHEN service_code = 'AWSMarketplace' THEN substr(md5(product), 1, 25) ELSE service_code END
                AS line_item_product_code,
            usage_type AS line_item_usage_type,
            operation AS line_item_operation,
            quantity AS line_item_usage_amount,
            cost AS line_item_unblended_cost,
            'USD' AS line_item_currency_code,
            {product_map} AS product,
            CASE WHEN service_code = 'AWSMarketplace' THEN NULL ELSE service_code END AS product_servicecode,
            unit AS pricing_unit,
            'us-east-1' AS product_region_code"""
    if flavour == "focus-1.0":
        # FOCUS 1.0 has no SkuMeter: AWS puts its usage type in x_UsageType, Azure its meter in
        # x_SkuMeterName, Google Cloud its SKU description in ChargeDescription only.
        usage = (
            "CASE WHEN cloud = 'aws' THEN usage_type END AS x_UsageType, "
            "CASE WHEN cloud = 'azure' THEN usage_type END AS x_SkuMeterName"
        )
        extra = ""
    else:
        usage = "usage_type AS SkuMeter, CASE WHEN cloud = 'azure' THEN usage_type END AS x_SkuMeterName"
        extra = ", 'AI Platforms' AS ServiceSubcategory, NULL AS InvoiceId"
    return f"""
            cost AS BilledCost, cost AS EffectiveCost, cost AS ListCost,
            '999999999999' AS BillingAccountId, 'Example Org' AS BillingAccountName, 'USD' AS BillingCurrency,
            {ts} AS ChargePeriodStart, {te} AS ChargePeriodEnd,
            {charge} AS ChargeCategory, NULL AS ChargeClass, 'Usage-Based' AS ChargeFrequency,
            quantity AS ConsumedQuantity, unit AS ConsumedUnit, quantity AS PricingQuantity, unit AS PricingUnit,
            CASE cloud WHEN 'azure' THEN 'Microsoft' WHEN 'gcp' THEN 'Google Cloud' ELSE 'AWS' END AS ProviderName,
            CASE WHEN service_name LIKE 'Claude%' THEN 'Anthropic' WHEN cloud = 'azure' THEN 'Microsoft'
                 WHEN cloud = 'gcp' THEN 'Google Cloud' ELSE 'Amazon Web Services, Inc.' END AS PublisherName,
            CASE cloud WHEN 'azure' THEN 'eastus2' WHEN 'gcp' THEN 'us-central1' ELSE 'us-east-1' END AS RegionId,
            service_name AS ServiceName,
            CASE WHEN service_code = 'AmazonBedrock' OR service_name IN ('Azure OpenAI', 'Vertex AI')
                      OR service_name LIKE 'Claude%' THEN 'AI and Machine Learning' ELSE 'Compute' END AS ServiceCategory,
            CASE WHEN cloud = 'gcp' THEN usage_type ELSE service_name || ' usage' END AS ChargeDescription,
            account AS SubAccountId, nullif(service_code, '') AS x_ServiceCode, {usage},
            nullif(operation, '') AS x_Operation{extra}"""


def generate(
    out: str,
    flavour: str = "focus-1.0",
    days: int = 45,
    accounts: int = 8,
    incidents: Sequence[str] = (),
    last_day: date = date(2026, 9, 30),
    seed: int = 7,
    ledger_url: str | None = None,
    provider: str = "aws",
) -> Manifest:
    if flavour not in ("focus-1.0", "focus-1.2", "cur-2.0"):
        raise BillingInputError(f"--flavour {flavour!r} is not known; choose focus-1.0, focus-1.2 or cur-2.0")
    if provider not in PROVIDERS:
        raise BillingInputError(f"--provider {provider!r} is not known; choose {', '.join(PROVIDERS)}")
    if provider != "aws" and flavour == "cur-2.0":
        raise BillingInputError(f"--provider {provider} needs a FOCUS flavour: CUR 2.0 is AWS only; use --flavour focus-1.2")
    if days < 10:
        raise BillingInputError(f"--days {days} is too short for a baseline; use at least 10 (31+ for detection)")
    assigned = _assign(accounts, incidents, provider)
    gw = [i for i in incidents if i in LEDGER_INCIDENTS]
    first_day = last_day - timedelta(days=days - 1)
    lines, truth = plan(assigned, first_day, days, seed, gw)
    parquet = out.lower().endswith(".parquet")
    gz = out.lower().endswith(".gz")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(":memory:")
    con.execute("SET preserve_insertion_order=false")
    with tempfile.TemporaryDirectory() as tmp:
        plan_csv = str(Path(tmp) / "plan.csv")
        _write_plan(lines, plan_csv)
        con.execute(
            f"""CREATE TABLE plan AS SELECT * FROM read_csv('{plan_csv}', header=true, columns={{
            'account': 'VARCHAR', 'day': 'DATE', 'service_code': 'VARCHAR', 'service_name': 'VARCHAR',
            'usage_type': 'VARCHAR', 'operation': 'VARCHAR', 'unit': 'VARCHAR', 'cost': 'DECIMAL(28,10)',
            'quantity': 'DECIMAL(28,10)', 'hourly': 'BOOLEAN', 'product': 'VARCHAR', 'cloud': 'VARCHAR'}})"""
        )
    # Hourly lines become 24 rows whose parts add up exactly to the day's figure.
    # Integer arithmetic: DuckDB divides DECIMALs through DOUBLE, which would not add up.
    part = "(CAST(CAST({c} * 10000000000 AS HUGEINT) // 24 AS DECIMAL(38,0)) * CAST(0.0000000001 AS DECIMAL(11,10)))"
    cost_part, qty_part = part.format(c="p.cost"), part.format(c="p.quantity")
    expanded = f"""
        SELECT p.account, p.service_code, p.service_name, p.usage_type, p.operation, p.unit, p.product, p.hourly, p.cloud,
               CAST(p.day AS TIMESTAMP) + h.h * INTERVAL 1 HOUR AS ts,
               CAST(CASE WHEN NOT p.hourly THEN p.cost WHEN h.h = 23 THEN p.cost - 23 * {cost_part}
                    ELSE {cost_part} END AS DECIMAL(28,10)) AS cost,
               CAST(CASE WHEN NOT p.hourly THEN p.quantity WHEN h.h = 23 THEN p.quantity - 23 * {qty_part}
                    ELSE {qty_part} END AS DECIMAL(28,10)) AS quantity
        FROM plan p JOIN (SELECT range AS h FROM range(24)) h ON p.hourly OR h.h = 0
    """
    opts = "FORMAT PARQUET" if parquet else ("FORMAT CSV, HEADER, NULLSTR 'NULL'" + (", COMPRESSION GZIP" if gz else ""))
    target = out.replace("'", "''")
    con.execute(f"COPY (SELECT {_columns(flavour, parquet)} FROM ({expanded})) TO '{target}' ({opts})")
    count = con.execute(f"SELECT count(*) FROM ({expanded})").fetchone()
    con.close()
    gateway = _account_id(0, provider)
    manifest = Manifest(flavour, days, first_day, last_day, assigned, gateway, [out], int(count[0]) if count else 0, truth)
    if ledger_url:
        write_ledger(ledger_url, truth)
    return manifest


def write_ledger(url: str, truth: dict[date, dict[str, dict[str, int]]]) -> int:
    """Write the gateway account's true traffic as ledger rows: one request per model per hour."""
    from tokenfuse.ledger.record import LedgerRow
    from tokenfuse.ledger.schema import COLUMN_NAMES, StoreURL, connect, placeholder

    dialect = StoreURL.parse(url).dialect
    rows = []
    for day, models in sorted(truth.items()):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        for label, classes in models.items():
            for h in range(24):
                part = {c: n // 24 + (n % 24 if h == 23 else 0) for c, n in classes.items()}
                price = _PRICES[label]
                cost = sum((Decimal(part.get(c, 0)) * price.get(c, Decimal(0)) / _MILLION for c in part), Decimal(0))
                row = LedgerRow(
                    ts=start + h * 3600 + 1800,
                    request_id=f"sample-{day.isoformat()}-{label}-{h}",
                    key_name="sample",
                    principal="sample-app",
                    workflow="nightly",
                    session=None,
                    protocol="bedrock",
                    route="converse",
                    model=LEDGER_MODEL_IDS[label],
                    upstream="bedrock",
                    status=200,
                    input_uncached=part.get("input_uncached", 0),
                    cache_read=part.get("cache_read", 0),
                    cache_write=part.get("cache_write", 0),
                    output=part.get("output", 0),
                    cost_usd=cost.quantize(Decimal("0.000000000001")),
                    latency_ms=900.0,
                    overhead_ms=1.0,
                )
                rows.append(row.as_tuple(dialect))
    sql = f"INSERT INTO requests ({', '.join(COLUMN_NAMES)}) VALUES ({', '.join([placeholder(dialect)] * len(COLUMN_NAMES))})"
    conn = connect(url)
    try:
        if dialect == "sqlite":
            conn.execute("BEGIN")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        else:
            with conn.cursor() as cur:
                cur.executemany(sql, rows)
    finally:
        conn.close()
    return len(rows)
