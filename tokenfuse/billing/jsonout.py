"""JSON with exact decimals: Decimal values are written as JSON numbers, digit for digit."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal
from typing import Any


def dumps(obj: Any, indent: int = 2, _level: int = 0) -> str:
    pad = " " * (indent * (_level + 1))
    end = " " * (indent * _level)
    if isinstance(obj, Decimal):
        if not obj.is_finite():
            return "null"
        text = format(obj, "f")
        return text
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | float | str):
        return json.dumps(obj)
    if isinstance(obj, date):
        return json.dumps(obj.isoformat())
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad}{json.dumps(str(k))}: {dumps(v, indent, _level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, list | tuple):
        if not obj:
            return "[]"
        items = [f"{pad}{dumps(v, indent, _level + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + end + "]"
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")
