"""Which export files are current: one delivery per billing period, earlier versions dropped.

AWS Data Exports write ``<export>/data/BILLING_PERIOD=YYYY-MM/`` (CUR 2.0 and FOCUS)
and re-deliver a period as it is restated; with "create new" delivery the older
versions stay beside the new one in their own sub-folder, and
``<export>/metadata/BILLING_PERIOD=YYYY-MM/<export>-Manifest.json`` lists the data
files of the current one (``dataFiles``; legacy CUR manifests say ``reportKeys``).
Summing every file in such a folder counts the period twice, so files are grouped
into deliveries and only the latest delivery of each export x billing period is read:

* the delivery the period's manifest names, where there is a manifest;
* otherwise the newest by file modification time, then by name (version folders are
  named by time, so later names are later deliveries).

Files outside that layout (a folder of downloads) are compared after loading, by what
they hold: an older file whose flavour, billing and usage accounts and day range are
all covered by a newer file of the same flavour is a superseded copy (``drop_covered``).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

_PARTITION = re.compile(r"^(?P<root>.*)/data/BILLING_PERIOD=(?P<period>\d{4}-\d{2})(?:/(?P<version>.+))?/[^/]+$", re.I)
# Legacy CUR: <report>/<yyyymmdd-yyyymmdd>/[<assemblyId>/]<file>.
_LEGACY = re.compile(r"^(?P<root>.*)/(?P<period>\d{8}-\d{8})(?:/(?P<version>[^/]+))?/[^/]+$")
# A delivery is split into chunks: name-00001.csv.gz, name-00002.csv.gz, part-0001.parquet.
_CHUNK = re.compile(r"([-_.]?(part-?)?\d{1,5})?(\.snappy)?\.(csv\.gz|csv|gz|tsv|parquet|pq)$", re.I)


@dataclass(slots=True)
class Delivery:
    """The files one export run wrote for one billing period (or one file group when the layout is unknown)."""

    root: str
    period: str | None  # YYYY-MM from the folder layout, None when unknown
    version: str
    files: list[str] = field(default_factory=list)
    in_manifest: bool = False

    @property
    def mtime(self) -> float:
        return max(os.path.getmtime(f) for f in self.files)

    @property
    def label(self) -> str:
        where = f"{self.root} billing period {self.period}" if self.period else self.root
        return f"{where}, version {self.version or '(top level)'}"

    def order_key(self) -> tuple[bool, float, str]:
        return (self.in_manifest, self.mtime, self.version)


def locate(path: str) -> tuple[str, str | None, str]:
    """(export root, billing period or None, version) of a data file, from its path."""
    p = path.replace(os.sep, "/")
    m = _PARTITION.match(p)
    if m:
        return m["root"], m["period"], m["version"] or ""
    m = _LEGACY.match(p)
    if m:
        return m["root"], m["period"], m["version"] or ""
    parent, name = os.path.split(p)
    return parent, None, _CHUNK.sub("", name)


def find_manifests(paths: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            out += sorted(str(f) for f in Path(p).rglob("*anifest.json") if f.is_file())
    return out


def manifest_keys(manifest: str) -> set[str]:
    """Data files a manifest names, as path tails (``BILLING_PERIOD=.../file``) comparable with local paths."""
    try:
        doc = json.loads(Path(manifest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    entries: list[str] = []
    for key in ("dataFiles", "reportKeys"):
        v = doc.get(key) if isinstance(doc, dict) else None
        if isinstance(v, list):
            entries += [str(e) for e in v if isinstance(e, str)]
    return {_tail(e) for e in entries}


def _tail(path: str, parts: int = 3) -> str:
    return "/".join(path.replace(os.sep, "/").rstrip("/").split("/")[-parts:])


def group(files: Iterable[str], manifests: Sequence[str] = ()) -> list[Delivery]:
    by_key: dict[tuple[str, str | None, str], Delivery] = {}
    for f in files:
        root, period, version = locate(f)
        d = by_key.get((root, period, version))
        if d is None:
            d = by_key[(root, period, version)] = Delivery(root, period, version)
        d.files.append(f)
    named: set[str] = set()
    for m in manifests:
        named |= manifest_keys(m)
    for d in by_key.values():
        d.in_manifest = any(_tail(f) in named for f in d.files)
    return list(by_key.values())


def latest_per_period(deliveries: Sequence[Delivery]) -> tuple[list[Delivery], list[str]]:
    """Keep one delivery per export x billing period; notes say what was dropped and why."""
    keep: list[Delivery] = []
    notes: list[str] = []
    periods: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    for d in deliveries:
        if d.period is None:
            keep.append(d)
        else:
            periods[(d.root, d.period)].append(d)
    for (_root, _period), ds in sorted(periods.items()):
        ds.sort(key=Delivery.order_key, reverse=True)
        winner, older = ds[0], ds[1:]
        keep.append(winner)
        why = "the manifest names" if winner.in_manifest else "newer"
        for d in older:
            notes.append(
                f"dropped {len(d.files)} file(s) of {d.label}: an earlier delivery of the same billing period "
                f"({why}: version {winner.version or '(top level)'})"
            )
    return keep, notes


@dataclass(frozen=True, slots=True)
class Extent:
    """What a loaded file holds, to tell a re-delivered copy from a different export."""

    file: str
    flavour: str
    billing_accounts: frozenset[str]
    accounts: frozenset[str]
    first_day: date
    last_day: date
    mtime: float


def drop_covered(extents: Sequence[Extent], unplaced: set[str]) -> tuple[set[str], list[str]]:
    """Files (among ``unplaced``, i.e. outside the Data Exports layout) that a newer file already covers."""
    by_delivery: dict[tuple[str, str], list[Extent]] = defaultdict(list)
    for e in extents:
        if e.file in unplaced:
            root, _, version = locate(e.file)
            by_delivery[(root, version)].append(e)
    merged = [
        Extent(
            "\n".join(sorted(x.file for x in es)),
            es[0].flavour,
            frozenset().union(*(x.billing_accounts for x in es)),
            frozenset().union(*(x.accounts for x in es)),
            min(x.first_day for x in es),
            max(x.last_day for x in es),
            max(x.mtime for x in es),
        )
        for es in by_delivery.values()
    ]
    merged.sort(key=lambda e: (e.mtime, e.file), reverse=True)
    dropped: set[str] = set()
    notes: list[str] = []
    kept: list[Extent] = []
    for e in merged:
        cover = next(
            (
                k
                for k in kept
                if k.flavour == e.flavour
                and e.billing_accounts <= k.billing_accounts
                and e.accounts <= k.accounts
                and k.first_day <= e.first_day
                and e.last_day <= k.last_day
            ),
            None,
        )
        if cover is None:
            kept.append(e)
            continue
        files = e.file.split("\n")
        dropped.update(files)
        notes.append(
            f"dropped {', '.join(files)}: the same export ({e.flavour}, {e.first_day}..{e.last_day}, "
            f"{len(e.accounts)} account(s)) is in newer {cover.file.split(chr(10))[0]}"
        )
    return dropped, notes
