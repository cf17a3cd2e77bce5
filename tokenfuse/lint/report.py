"""Findings as text (one per line, like other linters) or JSON."""

from __future__ import annotations

import json

from tokenfuse.lint.rules import Finding


def text(findings: list[Finding]) -> str:
    return "".join(f"{f.path}:{f.line}:{f.col}: {f.rule} {f.message}\n" for f in findings)


def as_json(findings: list[Finding]) -> str:
    rows = [
        {"path": f.path, "line": f.line, "col": f.col, "rule": f.rule, "message": f.message} for f in findings
    ]
    return json.dumps(rows, indent=2) + "\n"
