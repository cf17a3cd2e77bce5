"""From the model string a client sent to the names a price can be filed under.

Only suffixes and prefixes whose meaning is known are removed (an ARN's path,
a Bedrock inference-profile geography, a Bedrock version, a snapshot date), and
every candidate is then matched *exactly*. There is deliberately no
longest-prefix matching: ``gpt-4o-mini`` must never be priced as ``gpt-4o``,
nor ``gpt-4o-audio-preview`` as ``gpt-4o``. A name that does not reduce to a
catalog entry is unpriced, and the gateway fails closed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

# Bedrock system-defined inference profiles put a geography in front of the
# model id: ``us.anthropic...``, ``global.anthropic...``.
GEO_PREFIXES: frozenset[str] = frozenset({"us", "us-gov", "eu", "apac", "au", "jp", "ca", "global"})

# Bedrock vendor prefixes whose models Bedrock sells at the vendor's own list
# price, so the vendor's catalog entry prices them.
SAME_PRICE_VENDORS: tuple[str, ...] = ("anthropic.",)

_VERSION = re.compile(r"(?:-v\d+(?::\d+)?|-\d+:\d+|:\d+)$")
_DATE = re.compile(r"(?:-\d{8}|-\d{4}-\d{2}-\d{2}|@\d{8})$")


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    geo: str | None  # the inference-profile geography stripped on the way, if any
    steps: tuple[str, ...]  # what was done to the requested string to get here


def candidates(model: str) -> list[Candidate]:
    """Names to try in order, most specific first."""
    out: list[Candidate] = []
    seen: set[str] = set()
    name = model.strip()
    geo: str | None = None
    steps: tuple[str, ...] = ()

    def add(new: str, step: str | None) -> None:
        nonlocal name, steps
        if step is not None:
            if new == name:
                return
            steps = (*steps, step)
        name = new
        if name and name not in seen:
            seen.add(name)
            out.append(Candidate(name, geo, steps))

    add(name, None)
    if "%" in name:
        add(unquote(name), "URL-decoded")
    if name.startswith("arn:"):
        add(name.rsplit("/", 1)[-1], "ARN reduced to its last path segment")
    add(name.lower(), "lower-cased")
    head, dot, rest = name.partition(".")
    if dot and head in GEO_PREFIXES and "." in rest:
        geo = head
        add(rest, f"inference-profile prefix {head + '.'!r} removed")
    if m := _VERSION.search(name):
        add(name[: m.start()], f"Bedrock version suffix {m.group(0)!r} removed")
    for vendor in SAME_PRICE_VENDORS:
        if name.startswith(vendor):
            add(name[len(vendor) :], f"Bedrock vendor prefix {vendor!r} removed")
    if m := _DATE.search(name):
        add(name[: m.start()], f"snapshot date {m.group(0)!r} removed")
    return out
