"""Reading dict literals statically: which keys a request dict certainly has.

A request body or config dict is "closed" when every key is visible (a dict
literal with constant keys); a `**spread` or a non-constant key we cannot read
makes it "open", and then a missing key is unknown rather than absent.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Path = tuple[str, ...]
Presence = Literal["yes", "no", "unknown"]


@dataclass(slots=True)
class DictInfo:
    keys: dict[str, ast.expr] = field(default_factory=dict)
    open: bool = False
    # Paths set after construction (d["k"] = v, d.update(k=v)) whose value we do not track.
    added: set[Path] = field(default_factory=set)


# Resolves any expression to the dict it denotes, or None when it cannot be seen.
Resolver = Callable[[ast.expr], "DictInfo | None"]


def from_dict_literal(node: ast.Dict, resolve: Resolver) -> DictInfo:
    info = DictInfo()
    for key, value in zip(node.keys, node.values, strict=True):
        if key is None:
            merge_spread(info, resolve(value))
        elif isinstance(key, ast.Constant) and isinstance(key.value, str):
            info.keys[key.value] = value
        else:
            info.open = True
    return info


def from_keywords(keywords: list[ast.keyword], resolve: Resolver) -> DictInfo:
    info = DictInfo()
    for kw in keywords:
        if kw.arg is None:
            merge_spread(info, resolve(kw.value))
        else:
            info.keys[kw.arg] = kw.value
    return info


def merge_spread(info: DictInfo, spread: DictInfo | None) -> None:
    if spread is None:
        info.open = True
        return
    info.keys.update(spread.keys)
    info.added |= spread.added
    info.open = info.open or spread.open


def lookup(info: DictInfo, path: Path, resolve: Resolver) -> tuple[Presence, ast.expr | None]:
    """Whether `path` (nested keys) is set in the dict, and its value expression if seen."""
    if path in info.added:
        return "yes", None
    head = path[0]
    if head not in info.keys:
        if any(p[0] == head for p in info.added):
            return "unknown", None
        return ("unknown" if info.open else "no"), None
    value = info.keys[head]
    if len(path) == 1:
        return "yes", value
    nested = resolve(value)
    if nested is None:
        return "unknown", None
    return lookup(nested, path[1:], resolve)
