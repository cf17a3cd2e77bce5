"""Findings as a SARIF 2.1.0 log that GitHub code scanning accepts.

GitHub needs a driver name, rule metadata, a ruleId and a message per result,
and physical locations whose URIs are relative to the repository root; it
matches alerts across runs with partialFingerprints, so each result carries a
hash that survives unrelated edits above it (rule, path, the line's text and
its occurrence count rather than its line number).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from tokenfuse import __version__
from tokenfuse.lint.rules import RULES, Finding

# The $id the OASIS schema gives itself.
SCHEMA_URI = "https://raw.githubusercontent.com/oasis-tcs/sarif-spec/master/Schemata/sarif-schema-2.1.0.json"


def _rule(code: str) -> dict[str, Any]:
    rule = RULES[code]
    return {
        "id": code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": f"{rule.summary}. {rule.fix}"},
        "help": {
            "text": f"{rule.fix} See docs/lint.md#{code.lower()}.",
            "markdown": f"{rule.fix}\n\nSee `docs/lint.md`, section {code}.",
        },
        "defaultConfiguration": {"level": "warning"},
        "properties": {"tags": ["llm", "cost", "reliability"]},
    }


def _artifact(path: str) -> dict[str, str]:
    # Paths under the working directory are shown relative to it; others stay absolute.
    if os.path.isabs(path):
        return {"uri": Path(path).as_uri()}
    return {"uri": PurePosixPath(path).as_posix(), "uriBaseId": "%SRCROOT%"}


def _fingerprint(finding: Finding, line_text: str, occurrence: int) -> str:
    key = f"{finding.rule}\0{finding.path}\0{' '.join(line_text.split())}\0{occurrence}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _line_text(path: str, line: int, cache: dict[str, list[str]]) -> str:
    if path not in cache:
        try:
            with open(path, encoding="utf-8-sig", errors="replace") as fh:
                cache[path] = fh.read().splitlines()
        except OSError:
            cache[path] = []
    lines = cache[path]
    return lines[line - 1] if 0 < line <= len(lines) else ""


def to_sarif(findings: list[Finding]) -> dict[str, Any]:
    codes = sorted(RULES)
    index = {code: i for i, code in enumerate(codes)}
    cache: dict[str, list[str]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    results = []
    for f in findings:
        text = _line_text(f.path, f.line, cache)
        key = (f.rule, f.path, " ".join(text.split()))
        seen[key] = seen.get(key, 0) + 1
        results.append(
            {
                "ruleId": f.rule,
                "ruleIndex": index[f.rule],
                "level": "warning",
                "message": {"text": f.message},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": _artifact(f.path),
                            "region": {"startLine": f.line, "startColumn": f.col},
                        }
                    }
                ],
                "partialFingerprints": {"tokenfuseLineHash/v1": _fingerprint(f, text, seen[key])},
            }
        )
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "tokenfuse-lint",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_rule(code) for code in codes],
                    }
                },
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }


def as_sarif(findings: list[Finding]) -> str:
    return json.dumps(to_sarif(findings), indent=2) + "\n"
