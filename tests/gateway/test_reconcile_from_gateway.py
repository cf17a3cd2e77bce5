"""Issue 4's 1000x case end to end from a ledger the gateway itself wrote: boto3
traffic through the gateway, then a bill whose output tokens were entered as
1K-token units, then `tokenfuse reconcile`."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.gateway.conftest import ALICE_AKID, ALICE_SECRET, Stack
from tokenfuse.billing.cli import main as billing_main

MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
COLUMNS = [
    "bill_payer_account_id", "line_item_usage_account_id", "line_item_line_item_type",
    "line_item_usage_start_date", "line_item_usage_end_date", "line_item_product_code", "line_item_usage_type",
    "line_item_operation", "line_item_usage_amount", "line_item_unblended_cost", "line_item_currency_code",
    "product_product_name", "product_servicecode", "pricing_unit", "product_region_code",
]
# Per million tokens, the bill's own prices for a US cross-region profile.
BILL_PRICE = {"input": Decimal("1.1"), "output": Decimal("5.5")}
USAGE_TYPE = {"input": "USE1-Claude4.5Haiku-input-tokens", "output": "USE1-Claude4.5Haiku-output-tokens"}


def test_gateway_ledger_proves_a_1000x_unit_error(stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = boto3.client(
        "bedrock-runtime", endpoint_url=stack.url, region_name="us-east-1",
        aws_access_key_id=ALICE_AKID, aws_secret_access_key=ALICE_SECRET,
        config=BotoConfig(retries={"max_attempts": 1}),
    )
    for i in range(6):
        client.converse(
            modelId=MODEL,
            messages=[{"role": "user", "content": [{"text": f"Step {i}: review the diff and report problems. " * 8}]}],
            inferenceConfig={"maxTokens": 90},
        )
    rows = stack.rows()
    assert len(rows) == 6 and all(r["outcome"] == "ok" for r in rows)
    ledger = {"input": sum(r["input_uncached"] for r in rows), "output": sum(r["output"] for r in rows)}
    assert ledger["output"] == 6 * 64  # the simulator's default reply length

    day = datetime.fromtimestamp(rows[0]["ts"], UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    bill = tmp_path / "cur.csv"
    with bill.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for cls, tokens in ledger.items():
            # The provider's bug: output entered as a raw count of "1K tokens" units.
            amount = Decimal(tokens) if cls == "output" else Decimal(tokens) / 1000
            cost = amount * 1000 * BILL_PRICE[cls] / 1_000_000
            w.writerow([
                "999999999999", "111122223333", "Usage", day.strftime("%Y-%m-%dT%H:%M:%SZ"),
                (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"), "AmazonBedrock", USAGE_TYPE[cls],
                "InvokeModelInference", str(amount), str(cost), "USD", "Amazon Bedrock", "AmazonBedrock",
                "1K tokens", "us-east-1",
            ])
    report = tmp_path / "case.md"
    store = f"sqlite:///{stack.db}"
    rc = billing_main(["reconcile", "--ledger", store, "--billing", str(bill), "--json", "--report", str(report)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out, parse_float=Decimal)
    mismatches = [f for f in out["findings"] if f["kind"] == "unit_mismatch"]
    assert len(mismatches) == 1, out["findings"]
    (m,) = mismatches
    assert m["token_class"] == "output" and m["factor"] == 1000
    assert m["ledger_tokens"] == ledger["output"]
    assert m["billed_tokens"] == ledger["output"] * 1000
    assert Decimal(str(m["billed_usd"])) == Decimal(str(m["expected_usd"])) * 1000
    text = report.read_text()
    assert "billed raw tokens as 1K units" in text and day.strftime("%Y-%m-%d") in text
