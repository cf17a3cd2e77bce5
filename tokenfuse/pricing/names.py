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

# Longest model name the gateway prices or matches. Real ids are well under
# 128 characters (the longest Bedrock ARNs are ~110); anything longer is
# refused, never cached, so a client cannot make the gateway hold its garbage.
MAX_MODEL_NAME = 256

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
        add(unquote(name).strip(), "URL-decoded")
    if name[:4].lower() == "arn:":
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


_GLOB_CHARS = frozenset("*?[")
# What a bare vendor glob (``anthropic.*``) means once the vendor prefix is gone.
_VENDOR_FAMILY: dict[str, str] = {"anthropic.": "claude*"}


def is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS.intersection(pattern))


def reduce_name(model: str) -> str:
    """The model string with every known decoration removed: the most reduced candidate.

    Repeated until nothing changes, so the result reduces to itself (an
    identity must be a fixed point: canonicalising it again cannot move it).
    """
    name = model.strip()
    for _ in range(4):
        chain = candidates(name)
        reduced = chain[-1].name if chain else ""
        if reduced == name:
            break
        name = reduced
    return name


def reduce_pattern(pattern: str) -> str:
    """A glob over model ids, with the decorations that can be seen at its head removed.

    Only the head is reduced (percent-encoding, case, an ARN path, a geography,
    ``anthropic.``): cutting a ``-v1`` or a date off the tail of a glob could
    widen ``*-v1`` to ``*``. ``anthropic.*`` means every Claude model, which is
    ``claude*`` once the vendor prefix is gone.
    """
    name = pattern.strip()
    if "%" in name:
        name = unquote(name).strip()
    name = name.lower()
    if name.startswith("arn:") and "/" in name:
        name = name.rsplit("/", 1)[-1]
    head, dot, rest = name.partition(".")
    if dot and head in GEO_PREFIXES and "." in rest:
        name = rest
    for vendor in SAME_PRICE_VENDORS:
        if name.startswith(vendor):
            rest = name[len(vendor) :]
            name = rest if rest and not set(rest) <= _GLOB_CHARS else _VENDOR_FAMILY.get(vendor, rest)
    return name
