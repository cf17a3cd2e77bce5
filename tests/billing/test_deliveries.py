"""Export re-deliveries: the same billing period twice in a folder is read once."""

from __future__ import annotations

import json
import os
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path

from tokenfuse.billing.deliveries import locate
from tokenfuse.billing.detect import detect
from tokenfuse.billing.load import load
from tokenfuse.billing.sample import generate

INCIDENTS = ["runaway", "cache_miss"]


def _totals(paths: list[str]) -> dict[str, Decimal]:
    exp = load(paths)
    return dict(exp.con.execute("SELECT account, sum(cost) FROM bill GROUP BY account").fetchall())


def test_locate_reads_the_data_exports_layout() -> None:
    assert locate("/b/cur/my-export/data/BILLING_PERIOD=2026-09/my-export-00001.csv.gz") == (
        "/b/cur/my-export", "2026-09", "")
    assert locate("/b/x/data/BILLING_PERIOD=2026-09/20261002T030000Z-ab12/x-00002.snappy.parquet") == (
        "/b/x", "2026-09", "20261002T030000Z-ab12")
    assert locate("/d/downloads/export-00003.csv.gz") == ("/d/downloads", None, "export")


def _two_versions(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A CUR 2.0 export delivered twice for 2026-09 ("create new" delivery keeps both), full month each."""
    root = tmp_path / "bucket" / "cur" / "tf-cur"
    old = root / "data" / "BILLING_PERIOD=2026-09" / "20261001T030000Z-aaaa" / "tf-cur-00001.csv.gz"
    new = root / "data" / "BILLING_PERIOD=2026-09" / "20261003T030000Z-bbbb" / "tf-cur-00001.csv.gz"
    generate(str(old), "cur-2.0", days=30, accounts=3, incidents=INCIDENTS)
    generate(str(new), "cur-2.0", days=30, accounts=3, incidents=INCIDENTS)
    os.utime(old, (1_790_000_000, 1_790_000_000))
    os.utime(new, (1_790_200_000, 1_790_200_000))
    return root, old, new


def test_two_deliveries_of_one_billing_period_are_not_summed(tmp_path: Path) -> None:
    root, old, new = _two_versions(tmp_path)
    single = _totals([str(new)])
    exp = load([str(root)])
    assert exp.files == (str(new),)
    assert exp.dropped_files == [str(old)]
    assert dict(exp.con.execute("SELECT account, sum(cost) FROM bill GROUP BY account").fetchall()) == single
    (note,) = [n for n in exp.notes if n.startswith("dropped")]
    assert "billing period 2026-09" in note and "20261001T030000Z-aaaa" in note and "20261003T030000Z-bbbb" in note


def test_the_manifest_names_the_current_delivery(tmp_path: Path) -> None:
    root, old, new = _two_versions(tmp_path)
    # The manifest, not the file times, says which delivery is current.
    os.utime(old, (1_790_300_000, 1_790_300_000))
    manifest = root / "metadata" / "BILLING_PERIOD=2026-09" / "tf-cur-Manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({
        "executionId": "bbbb",
        "billingPeriod": {"start": "2026-09-01T00:00:00.000Z", "end": "2026-10-01T00:00:00.000Z"},
        "dataFiles": ["s3://bucket/cur/tf-cur/data/BILLING_PERIOD=2026-09/20261003T030000Z-bbbb/tf-cur-00001.csv.gz"],
    }))
    exp = load([str(root)])
    assert exp.files == (str(new),)
    assert any("the manifest names" in n for n in exp.notes)


def test_the_same_file_twice_in_a_download_folder(tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    first = folder / "cur.parquet"
    generate(str(first), "cur-2.0", days=45, accounts=4, incidents=INCIDENTS)
    copy = folder / "cur (1).parquet"
    shutil.copy(first, copy)
    os.utime(first, (1_790_000_000, 1_790_000_000))
    alone = detect(load([str(first)]))
    exp = load([str(folder)])
    both = detect(exp)
    assert exp.dropped_files == [str(first)]
    assert any(n.startswith(f"dropped {first}") for n in exp.notes)
    assert any(n.startswith(f"dropped {first}") for n in both.notes)
    a, b = alone.flagged[0], both.flagged[0]
    assert (b.recent_avg, b.baseline_avg) == (a.recent_avg, a.baseline_avg)


def test_different_exports_in_one_folder_are_both_read(tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    generate(str(folder / "aug.parquet"), "cur-2.0", days=20, accounts=2, last_day=date(2026, 8, 31))
    generate(str(folder / "sep.parquet"), "cur-2.0", days=20, accounts=2, last_day=date(2026, 9, 30))
    exp = load([str(folder)])
    assert exp.dropped_files == [] and len(exp.files) == 2
